"""Serving the monitor from a background thread of the daemon.

The socket is bound here, in the caller's thread, so a port already in use or an
address that does not exist is a one-line error at startup rather than a silent
thread death; port 0 binds an ephemeral port and `url` reports the real one.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from finetuned.config import MonitorSettings
from finetuned.monitor.app import create_app
from finetuned.monitor.security import is_loopback
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)


class MonitorRefused(Exception):
    """The monitor cannot start as configured; the message says what to change."""


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
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2,
            # a proxy's headers are not trusted: nobody sits in front of a workstation's monitor
            proxy_headers=False, server_header=False,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # the daemon log says what matters
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
