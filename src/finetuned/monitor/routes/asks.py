"""Try it: a question for the model line, answered by the daemon's side (the worker between steps, or the
answerer while nothing trains), and the recent questions with their answers.

The monitor only writes the question file and reads the answer files (`finetuned.asks`);
the daemon decides who answers. An answer comes as an `asks` event on the stream, or by polling.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from finetuned import asks
from finetuned.monitor.deps import FilesDep, Guarded, SettingsDep
from finetuned.monitor.schemas import AskBody
from finetuned.monitor.views import asks_view, daemon_view

router = APIRouter(prefix="/api/asks", tags=["asks"], dependencies=Guarded)

AskId = Annotated[str, Path(pattern=asks.ID.pattern, description="a question's id, YYYYMMDD_HHMMSS_xxxxxxxx")]


@router.get("")
async def recent(files: FilesDep, limit: Annotated[int, Query(ge=1, le=asks.KEEP_ANSWERS)] = 20) -> dict[str, Any]:
    """The newest questions, pending and answered (text, source, job, step, seconds), newest first."""
    return asks_view(files, limit)


@router.post("", status_code=202, responses={429: {}, 503: {}})
def ask(body: AskBody, files: FilesDep, settings: SettingsDep) -> dict[str, Any]:
    """Ask the model line: 202 with the pending question; 429 when too many wait, 503 with no daemon to answer."""
    daemon = daemon_view(files.status(), settings, time.time())
    if not daemon["responding"]:
        raise HTTPException(503, f"{daemon['message']}; questions are answered only while it runs")
    try:
        question = asks.submit(files.ws, body.prompt, body.system)
    except asks.AskError as exc:
        raise HTTPException(429, str(exc)) from None
    return {"status": "pending", **question.model_dump()}


@router.get("/{ask_id}", responses={404: {}})
async def one(ask_id: AskId, files: FilesDep) -> dict[str, Any]:
    """One question: `pending`, or `answered` with its answer (or `error`) and the weights that gave it."""
    found = asks.view(files.ws, ask_id)
    if found is None:
        raise HTTPException(404, f"no question {ask_id} (answers are kept {asks.KEEP_SECONDS / 3600:.0f} h)")
    return found
