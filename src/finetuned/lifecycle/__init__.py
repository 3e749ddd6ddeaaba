"""The model line over months: versions, consolidation, export, retention, health, notifications.

Everything here is a library function the CLI (and the daemon) calls; nothing
that holds a trained model is ever deleted here except checkpoints, and only
under the retention rule of `retention.py`.
"""
