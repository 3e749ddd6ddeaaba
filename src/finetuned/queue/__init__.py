"""The job queue: records on disk, their states and the files they own."""
