"""The monitor's FastAPI application: wiring only."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from finetuned import __version__
from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files
from finetuned.monitor.prom import registry
from finetuned.monitor.routes import asks, control, jobs, page, prometheus, queue, status, upload
from finetuned.monitor.routes.page import STATIC
from finetuned.workspace import Workspace


def create_app(ws: Workspace, settings: MonitorSettings) -> FastAPI:
    # No /docs: Swagger UI loads from a CDN and the monitor must work offline; /openapi.json stays.
    app = FastAPI(title="finetuned monitor", version=__version__, docs_url=None, redoc_url=None,
                  description="Watch and steer a finetuned daemon: state, queue, metrics, controls, uploads, "
                              "questions for the model.")
    app.state.settings = settings
    app.state.files = Files(ws)
    app.state.registry = registry(app.state.files, settings)
    app.state.stopping = threading.Event()  # tells open event streams to end when the server stops
    for router in (status.router, queue.router, jobs.router, jobs.line_router, control.router, upload.router,
                   asks.router, prometheus.router, page.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
