"""The daemon: watches the inbox, keeps the queue, supervises the training worker."""
