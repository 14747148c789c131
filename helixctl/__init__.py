"""helixctl: the command-line client of helixd over its Unix-socket JSON API."""
