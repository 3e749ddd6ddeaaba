"""The page itself, and the login form that sets its cookie when the monitor has a token."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from finetuned.monitor.deps import SettingsDep
from finetuned.monitor.security import COOKIE, cross_site, host_allowed, session_value, token_matches, token_ok

STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_FORM_BYTES = 4096

router = APIRouter(tags=["page"], include_in_schema=False)


def _check_host(request: Request, settings: SettingsDep) -> None:
    if not host_allowed(request, settings):
        raise HTTPException(403, "this monitor answers only to a loopback host name (127.0.0.1, localhost)")


@router.get("/")
async def index(request: Request, settings: SettingsDep) -> Response:
    _check_host(request, settings)
    if not token_ok(request, settings):
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
    if not token_matches(given, settings.token):
        return _login_page('<p class="error">That is not the token in config.json (monitor.token).</p>', 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, session_value(settings.token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=30 * 86400)
    return response
