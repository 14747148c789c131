"""Supervision of provider processes: spawn, watch, restart with backoff, stop whole groups."""
