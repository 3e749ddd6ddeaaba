"""Evaluation suites: does the model answer what a good answer says?

`evals/SUITE.jsonl` in the workspace holds one case a line: a prompt (chat messages or text),
what a good answer is, and how to score it (suites.py, scorers.py). The worker runs them on the
loaded model between steps, within a budget of training time (runner.py); `finetuned eval`
scores a version, an adapter or the base; consolidation and `use` compare a candidate with the
current version on them before switching (lifecycle/gate.py).
"""
