"""The training worker: a child process that keeps the model loaded and trains jobs step by step."""
