"""The answerer: a short-lived process that answers the monitor's questions while nothing trains.

The daemon starts it when a question comes and no job trains (idle, or a job paused), ends
it before a job starts, and shuts it down after a minute with nothing to answer, so it never
holds memory a starting job needs (daemon/askdesk.py). For each question it resolves the line's
target again (the newest checkpoint, else the current version) and loads it, on the CPU in
float32 as `finetuned chat` does, only when that changed. A child program (processes/child.py):
the daemon names it by its module string and never imports it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from finetuned import checkpoints
from finetuned.config import ConfigError
from finetuned.lifecycle.errors import LifecycleError
from finetuned.processes.protocol import Answer, Ask

if TYPE_CHECKING:
    from finetuned.lifecycle.targets import Target
    from finetuned.processes.link import Link
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.answerer")


def _job_and_step(target: Target) -> tuple[str | None, int | None]:
    """The job whose weights a target holds, and that job's step for a checkpoint."""
    if target.checkpoint is not None:
        found = checkpoints.NAME.match(target.checkpoint.name)
        return target.checkpoint.parent.name, int(found.group(1)) if found else None
    if target.kind == "adapter":
        return (target.adapter or target.model).name, None
    return None, None


def serve(ws: Workspace, link: Link) -> None:
    from transformers.utils import logging as hf_logging

    from finetuned.chat.generate import reply
    from finetuned.data.masking import prompt_ids
    from finetuned.lifecycle.targets import describe, load, resolve

    hf_logging.disable_progress_bar()
    loaded: tuple[Any, Any, Any] | None = None  # (what was loaded, model, tokenizer)
    for order in link.orders(Ask):
        started = time.monotonic()
        source, job_id, step, line_step, text, error = "", None, None, None, "", ""
        try:
            config = ws.load_config()
            target = resolve(ws, None)
            source, line_step = describe(target), target.step
            job_id, step = _job_and_step(target)
            key = (target.model, target.adapter, target.checkpoint)
            if loaded is None or loaded[0] != key:
                loaded = None  # the old model goes before the new one comes
                log.info("answerer: loading %s", source)
                loaded = (key, *load(target, config))
            _, model, tokenizer = loaded
            text = reply(model, tokenizer, prompt_ids(tokenizer, order.messages), order.max_new_tokens,
                         max_time=order.seconds)
        except (LifecycleError, ConfigError) as exc:
            error = str(exc)
        except Exception as exc:  # the question is answered with the error; the next one may fare better
            log.exception("answerer: ask %s failed", order.id)
            error = f"{type(exc).__name__}: {exc}"
        link.send(Answer(id=order.id, text=text, source=source, job_id=job_id, step=step, line_step=line_step,
                         seconds=round(time.monotonic() - started, 3), error=error))
