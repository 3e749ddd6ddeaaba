"""The live web monitor: a page and a JSON API that read the daemon's files and write control files.

It runs in a thread of the daemon but never calls into it: everything it shows comes
from the workspace's files, everything it does goes through the same control files
and request files as the CLI, so the daemon's main thread keeps every decision.
"""
