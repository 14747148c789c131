"""The Unix-socket control API used by helixctl."""
