"""The `finetuned` command line: thin commands over library functions."""
