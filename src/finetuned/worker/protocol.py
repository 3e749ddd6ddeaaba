"""Messages between the daemon and the training worker (plain dicts over a pipe).

daemon -> worker
  train     {job_id, file, sha256, config, line_exclude}   train this job until it ends or is told to yield
  yield     {reason}                               checkpoint at the next step boundary, then wait
  shutdown  {}                                     exit (the model's memory goes with the process)
worker -> daemon
  ready     {pid}
  phase     {job_id, phase}                        loading model, tokenizing...: a heartbeat too
  started   {job_id, step, total_steps, examples, resumed_from}
  step      {job_id, step, total_steps, loss, lr, tokens, examples, step_seconds}
  checkpoint {job_id, step, path}
  yielded   {job_id, reason, step, checkpoint}
  completed {job_id, summary}
  failed    {job_id, reason, step, data_error}     data_error: the NAME.error.json body, if the data is at fault
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def msg(kind: str, **fields: Any) -> Message:
    return {"type": kind, **fields}
