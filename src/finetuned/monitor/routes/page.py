"""The page itself, and the login form that sets its cookie when the monitor has a token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from finetuned.config import MonitorSettings
from finetuned.monitor.deps import SettingsDep
from finetuned.monitor.security import (
    COOKIE,
    SESSION_SECONDS,
    TARPIT_SECONDS,
    TooManyAttempts,
    client_address,
    cross_site,
    host_allowed,
    logged_in,
    new_session,
)

STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_FORM_BYTES = 4096
# The login page's look: shown before any token, so it is served without one (it tells nothing).
PUBLIC_ASSETS = frozenset({"app.css"})
HOST_REFUSED = "this monitor answers only to a loopback host name (127.0.0.1, localhost)"

router = APIRouter(tags=["page"], include_in_schema=False)


def _check_host(request: Request, settings: SettingsDep) -> None:
    if not host_allowed(request, settings):
        raise HTTPException(403, HOST_REFUSED)


class GuardedStatic(StaticFiles):
    """The page's scripts and styles, behind the page's own checks: the host always, the token but for the
    login page's stylesheet."""

    def __init__(self, settings: Callable[[], MonitorSettings]) -> None:
        super().__init__(directory=STATIC)
        self.settings = settings  # read at each request: a token set while the daemon runs applies at once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            conn = HTTPConnection(scope)
            refusal = None
            settings = self.settings()
            if not host_allowed(conn, settings):
                refusal = PlainTextResponse(HOST_REFUSED, 403)
            elif PurePosixPath(scope["path"]).name not in PUBLIC_ASSETS and not logged_in(conn, settings):
                refusal = PlainTextResponse("this monitor needs its token: log in at /login", 401)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@router.get("/")
async def index(request: Request, settings: SettingsDep) -> Response:
    _check_host(request, settings)
    if not logged_in(request, settings):
        return RedirectResponse("/login", status_code=303)
    # no-cache: after an upgrade the page must not run yesterday's script against today's API
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _login_page(message: str = "", status: int = 200) -> HTMLResponse:
    html = (STATIC / "login.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("<!--message-->", message), status_code=status)


@router.get("/login")
async def login_form(request: Request, settings: SettingsDep) -> Response:
    _check_host(request, settings)
    if not settings.token:
        return RedirectResponse("/", status_code=303)
    return _login_page()


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    _check_host(request, settings)
    why = cross_site(request)
    if why is not None:  # login CSRF: another site must not log the browser in with its token
        raise HTTPException(403, f"refused {why}")
    if not settings.token:
        return RedirectResponse("/", status_code=303)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
    try:
        right = request.app.state.throttle.attempt(client_address(request), given, settings.token)
    except TooManyAttempts as exc:
        await asyncio.sleep(min(exc.wait, TARPIT_SECONDS))
        response = _login_page(f'<p class="error">Too many wrong tokens: try again in {exc.wait} s.</p>', 429)
        response.headers["Retry-After"] = str(exc.wait)
        return response
    if not right:
        return _login_page('<p class="error">That is not the token in config.json (monitor.token).</p>', 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, new_session(settings.token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=SESSION_SECONDS)
    return response
