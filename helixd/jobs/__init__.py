"""Scheduled operations (DESIGN.md component ``jobs``): health, update, backup, cleanup,
rotation and alerts, run by APScheduler on the daemon's event loop."""
