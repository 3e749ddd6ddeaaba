"""Serving the monitor from a background thread of the daemon.

The socket is bound here, in the caller's thread, so a port already in use or an
address that does not exist is a one-line error at startup rather than a silent
thread death; port 0 binds an ephemeral port and `url` reports the real one.

The monitor shares the daemon's file descriptors, so it keeps its own count: at most
`connection_limit()` connections open (a quarter of the process's limit at most), a
connection over it closed as soon as it is accepted, and one that has not sent a whole
request head within `monitor.header_timeout_seconds` closed too. Idle sockets, half-sent
requests and a crowd of pages can slow the page down, never starve the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from finetuned.config import MonitorSettings, is_loopback
from finetuned.errors import FinetunedError
from finetuned.monitor.app import create_app
from finetuned.monitor.upload import clear_parts
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 16 * 1024  # a request head larger than this is refused (400)
REFUSAL_LOG_SECONDS = 60.0  # "too many connections" is logged at most this often


def connection_limit(max_connections: int) -> int:
    """`monitor.max_connections`, but never more than a quarter of the descriptors this process may open."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(4, min(max_connections, soft // 4))


def guarded_protocol(limit: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a deadline for the request head."""
    refused = {"count": 0, "logged": 0.0}

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limit:
                self.transport = transport
                transport.abort()  # its descriptor goes at once
                refused["count"] += 1
                if time.monotonic() - refused["logged"] > REFUSAL_LOG_SECONDS:
                    refused["logged"] = time.monotonic()
                    log.warning("the monitor has %d connections open, its limit: refusing more (%d so far)",
                                limit, refused["count"])
                return
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on a kept-alive connection gets its own deadline
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the head is in: a request, or a long event stream, may take its time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.flow is None:  # refused in connection_made: nothing of uvicorn's was set up
                return
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.abort()

    return Guarded


class MonitorRefused(FinetunedError):
    """The monitor cannot start as configured; the message says what to change."""

    exit_code = 2  # `run` refuses before starting anything: a setting to change, not a failure to retry


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise MonitorRefused(f"monitor.host '{host}' is not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a crash can rebind
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise MonitorRefused(f"the monitor cannot listen on {host}:{port} ({exc.strerror}); "
                             "set monitor.port in config.json, or run with --no-monitor") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


class MonitorServer:
    def __init__(self, ws: Workspace, settings: MonitorSettings) -> None:
        self.settings: MonitorSettings = settings
        if not is_loopback(self.settings.host) and not self.settings.token:
            raise MonitorRefused(
                f"monitor.host is {self.settings.host}, reachable from other machines, and monitor.token is not "
                "set: anyone who reaches the port could pause, skip or feed the daemon. Set monitor.token in "
                "config.json, or keep monitor.host at 127.0.0.1")
        self.ws = ws
        self.app = create_app(ws, self.settings)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15) -> None:
        """Serve in a background thread; return once it accepts connections."""
        sock = _bind(self.settings.host, self.settings.port)
        clear_parts([self.ws.inbox_normal, self.ws.inbox_priority])  # this daemon's uploads start now
        port = sock.getsockname()[1]
        limit = connection_limit(self.settings.max_connections)
        options: dict[str, Any] = {
            "http": guarded_protocol(limit, self.settings.header_timeout_seconds),
            "limit_concurrency": limit + 1,  # requests in flight; connections are capped by the protocol
            # asyncio accepts up to `backlog` sockets at a time before the protocol can refuse one: a small
            # batch keeps the descriptors open at once near the limit (it is the kernel's queue length too)
            "backlog": max(8, limit // 4),
            "timeout_keep_alive": KEEP_ALIVE_SECONDS, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        }
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
            # a proxy's headers are not trusted: nobody sits in front of a workstation's monitor
            proxy_headers=False, server_header=False, **options,
        )
        # The daemon log says what matters: not every malformed request or dropped connection a stranger sends.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="monitor", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise MonitorRefused(f"the monitor did not start on {self.settings.host}:{port}")
            time.sleep(0.02)
        self.url = f"http://{self._url_host(sock)}:{port}/"

    def apply(self, settings: MonitorSettings) -> list[str]:
        """config.json's monitor section changed while serving: the token and the guard's rules apply from the
        next request on; returns the keys that need a restart (where it listens, how many it serves)."""
        bound = ("host", "port", "max_connections", "header_timeout_seconds")
        later = [key for key in bound if getattr(settings, key) != getattr(self.settings, key)]
        if not is_loopback(self.settings.host) and not settings.token:
            later.append("token")  # never drop the token of a monitor other machines reach
            settings = settings.model_copy(update={"token": self.settings.token})
        live = settings.model_copy(update={key: getattr(self.settings, key) for key in bound})
        self.settings = live
        self.app.state.settings = live
        self.app.state.events.changes.settings = live
        return later

    def _url_host(self, sock: socket.socket) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):  # every interface: loopback is the one address sure to work here
            host = "127.0.0.1" if sock.family == socket.AF_INET else "::1"
        return f"[{host}]" if ":" in host else host

    def stop(self, timeout: float = 5) -> None:
        self.app.state.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the monitor did not stop within %.0f s; leaving its thread behind", timeout)
