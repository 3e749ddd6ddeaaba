"""Shared dependencies: settings, the workspace's files, and the guard every API router uses.

Settings come through `get_settings` so a test can swap them with
`app.dependency_overrides[get_settings]`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files
from finetuned.monitor.security import (
    COOKIE,
    SAFE_METHODS,
    TARPIT_SECONDS,
    TooManyAttempts,
    bearer,
    client_address,
    cross_site,
    host_allowed,
    session_ok,
)


async def get_settings(request: Request) -> MonitorSettings:
    return request.app.state.settings


async def get_files(request: Request) -> Files:
    return request.app.state.files


SettingsDep = Annotated[MonitorSettings, Depends(get_settings)]
FilesDep = Annotated[Files, Depends(get_files)]


async def guard(request: Request, settings: SettingsDep) -> None:
    """Host, then origin (for anything that changes state), then token; see security.py for why."""
    if not host_allowed(request, settings):
        raise HTTPException(403, "this monitor answers only to a loopback host name (127.0.0.1, localhost)")
    if request.method not in SAFE_METHODS:
        why = cross_site(request)
        if why is not None:
            raise HTTPException(403, f"refused {why}: only the monitor's own page may change anything")
    token = settings.token
    if not token:
        return
    given = bearer(request)
    if given is not None:  # a try at the token: counted, and refused for a while after too many wrong ones
        try:
            if request.app.state.throttle.attempt(client_address(request), given, token):
                return
        except TooManyAttempts as exc:
            await asyncio.sleep(min(exc.wait, TARPIT_SECONDS))
            raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.wait)}) from None
    else:
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and session_ok(cookie, token):
            return
    raise HTTPException(401, "this monitor needs its token: 'Authorization: Bearer TOKEN', or log in at /login",
                        headers={"WWW-Authenticate": "Bearer"})


Guarded = [Depends(guard)]
