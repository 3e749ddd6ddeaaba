"""Child processes: the wire, a child's side of it and the daemon's, and how a training group is launched.

This layer sits between the services (daemon, lifecycle) and the worker: both import it, it imports
neither. Nothing in it loads torch at import time (`tests/daemon/test_layers.py` imports every module
of the package to check), so the daemon can start, talk to and watch its children without the weight
of what they do. A child is named by its module's string (`ChildHandle(root, "finetuned.worker.preparer")`)
and that module's `serve` function is all it adds.
"""
