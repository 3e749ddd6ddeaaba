"""Who may read the monitor and who may change anything through it.

Three checks, each against a different attacker:
- Host: a page on another site whose name resolves to 127.0.0.1 (DNS rebinding) would
  talk to the monitor as same-origin; on a loopback-only monitor its Host header gives it away.
- Origin: any web page can POST to http://127.0.0.1:8080 from the user's own browser;
  the browser says where the request comes from, and only the monitor's own page may act.
- Token: beyond loopback, other people can reach the port; they need the token, as a
  bearer header (scripts) or an HttpOnly cookie set by /login (the page). Someone guessing
  it is slowed down per address (`Throttle`), and a cookie stops working after a day.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from finetuned.config import MonitorSettings, is_loopback
from finetuned.errors import FinetunedError

COOKIE = "finetuned_session"
SESSION_SECONDS = 24 * 3600  # a browser logs in again after a day; a stolen cookie dies with it
# Wrong tokens from one address: the first few are typos; after that each one locks the address out twice
# as long as the one before (1 s, 2 s, 4 s... at most 15 min), so guessing a 16-character token never ends.
FREE_FAILURES = 5
MAX_LOCKOUT_SECONDS = 900.0
# A wrong token from a waiting address is answered after this long, so guessing while locked out stays slow
# (the request waits without holding a thread; the server's connection cap bounds how many wait at once).
TARPIT_SECONDS = 2.0
_MAX_ADDRESSES = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Browsers send one of these on every fetch; anything else means another site asked.
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
# A Host header: a DNS name or IPv4 address (labels of letters, digits and inner hyphens, a root dot allowed),
# or [an IPv6 address]; then an optional :port of digits. Nothing else: no userinfo, no path, no spaces.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>{_LABEL}(?:\.{_LABEL})*\.?))(?::(?P<port>[0-9]{{1,5}}))?")
_IPV4_LIKE = re.compile(r"[0-9.]+")


def host_name(host_header: str) -> str | None:
    """The host of a Host header, strictly (RFC 9110: `host[:port]`): '127.0.0.1:8080' -> '127.0.0.1',
    '[::1]:8080' -> '::1'; None for anything else ('127.0.0.1:8080@evil.example' is no host, whatever
    part of it a lax split would take)."""
    match = _HOST.fullmatch(host_header.lower())
    if match is None or (match["port"] and int(match["port"]) > 65535):
        return None
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return None
        return match["v6"]
    name = match["name"]
    if _IPV4_LIKE.fullmatch(name):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return None  # 127.0.0.1.5 or 300.1.1.1: neither an address nor a name
    return name


def host_allowed(conn: HTTPConnection, settings: MonitorSettings) -> bool:
    """A Host that parses; on a loopback monitor, a loopback one: a rebound DNS name is someone else's page."""
    name = host_name(conn.headers.get("host", ""))
    if name is None:
        return False
    # Beyond loopback the monitor is reached by any name it has; the token is what protects it.
    return not is_loopback(settings.host) or is_loopback(name)


def cross_site(conn: HTTPConnection) -> str | None:
    """Why a state-changing request comes from another site, or None when it is the page's own."""
    origin = conn.headers.get("origin")
    if origin is not None:
        if origin == "null":
            return "a request from an opaque origin (a sandboxed frame or a local file)"
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != conn.headers.get("host", "").lower():
            return f"a cross-site request from {origin}"
        return None
    site = conn.headers.get("sec-fetch-site")
    if site is not None and site not in SAME_SITE_FETCH:
        return f"a {site} request"
    return None  # no browser markers: a script or curl, which the token (if any) still guards


def session_value(token: str, expires: int) -> str:
    """`EXPIRES.MAC`: when the session ends, signed with the token. The cookie never holds the token itself,
    and changing the token ends every session."""
    mac = hmac.new(token.encode(), f"finetuned-monitor-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def new_session(token: str, now: float | None = None) -> str:
    return session_value(token, int((time.time() if now is None else now) + SESSION_SECONDS))


def session_ok(value: str, token: str, now: float | None = None) -> bool:
    expires, _, _mac = value.partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(value.encode(), session_value(token, int(expires)).encode())


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), token.encode())


def bearer(conn: HTTPConnection) -> str | None:
    """The token a script sends (`Authorization: Bearer TOKEN`), or None."""
    scheme, _, given = conn.headers.get("authorization", "").partition(" ")
    return given if scheme.lower() == "bearer" else None


def logged_in(conn: HTTPConnection, settings: MonitorSettings) -> bool:
    """The page's check: its session cookie. A bearer token is the API's business, where wrong ones are
    counted (deps.guard): the page and its assets never test one, so they cannot be used to guess it."""
    token = settings.token
    if not token:
        return True
    cookie = conn.cookies.get(COOKIE)
    return cookie is not None and session_ok(cookie, token)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


class TooManyAttempts(FinetunedError):
    def __init__(self, wait: int) -> None:
        super().__init__(f"too many wrong tokens from this address: try again in {wait} s")
        self.wait = wait


class Throttle:
    """Wrong tokens counted per client address; past FREE_FAILURES, the address waits longer each time (the right
    token is never refused)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, float]] = {}  # address -> (wrong tokens, locked until)

    def wait_seconds(self, address: str) -> int:
        """How long `address` must wait before its next try; 0 when it may try now."""
        with self._lock:
            _failures, until = self._state.get(address, (0, 0.0))
            return max(math.ceil(until - self._clock()), 0)

    def attempt(self, address: str, given: str, token: str) -> bool:
        """Whether `given` is the token. The right token always passes: on loopback every local account is one
        address, and a stranger's wrong guesses must never lock the owner out. A wrong one while `address` waits
        raises TooManyAttempts (answered slowly: see TARPIT_SECONDS); guessing stays bounded by the wait."""
        if token_matches(given, token):
            self.succeeded(address)
            return True
        wait = self.wait_seconds(address)
        if wait:
            raise TooManyAttempts(wait)
        self.failed(address)
        return False

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._state.get(address, (0, 0.0))[0] + 1
            extra = failures - FREE_FAILURES
            lockout = min(2.0 ** (extra - 1), MAX_LOCKOUT_SECONDS) if extra > 0 else 0.0
            if len(self._state) >= _MAX_ADDRESSES:
                self._forget_idle()
            self._state[address] = (failures, self._clock() + lockout)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._state.pop(address, None)

    def _forget_idle(self) -> None:
        now = self._clock()
        for address, (_failures, until) in list(self._state.items()):
            if until + MAX_LOCKOUT_SECONDS < now:
                del self._state[address]
