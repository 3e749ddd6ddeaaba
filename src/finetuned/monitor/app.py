"""The monitor's FastAPI application: wiring only."""

from __future__ import annotations

import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from finetuned import __version__
from finetuned.config import MonitorSettings
from finetuned.fsio import is_disk_full
from finetuned.monitor.events import EventHub
from finetuned.monitor.files import Files
from finetuned.monitor.prom import registry
from finetuned.monitor.routes import asks, control, jobs, page, prometheus, queue, schema, status, upload
from finetuned.monitor.routes.page import GuardedStatic
from finetuned.monitor.security import Throttle
from finetuned.workspace import Workspace


async def _disk_full(_request: Request, exc: Exception) -> JSONResponse:
    if not is_disk_full(exc):
        raise exc
    return JSONResponse({"detail": "the disk is full: nothing was changed; free space and try again"}, 507)


def create_app(ws: Workspace, settings: MonitorSettings) -> FastAPI:
    # No /docs: Swagger UI loads from a CDN and the monitor must work offline. /openapi.json is served by
    # routes/schema.py, behind the API's guard.
    app = FastAPI(title="finetuned monitor", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description="Watch and steer a finetuned daemon: state, queue, metrics, controls, uploads, "
                              "questions for the model.")
    app.state.settings = settings
    app.state.files = Files(ws)
    app.state.registry = registry(app.state.files, settings)
    app.state.stopping = threading.Event()  # tells open event streams to end when the server stops
    app.state.events = EventHub(app.state.files, settings, app.state.stopping)
    app.state.throttle = Throttle()
    for router in (status.router, queue.router, jobs.router, jobs.line_router, control.router, upload.router,
                   asks.router, prometheus.router, schema.router, page.router):
        app.include_router(router)
    app.mount("/static", GuardedStatic(lambda: app.state.settings), name="static")
    app.add_exception_handler(OSError, _disk_full)
    return app
