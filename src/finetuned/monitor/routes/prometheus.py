"""/metrics for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from finetuned.monitor.deps import Guarded

router = APIRouter(tags=["prometheus"], dependencies=Guarded)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "text format 0.0.4"}})
def metrics(request: Request) -> Response:
    """Steps, tokens, loss, learning rate, throughput, ETAs, queue length, jobs by state, training durations."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
