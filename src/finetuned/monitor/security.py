"""Who may read the monitor and who may change anything through it.

Three checks, each against a different attacker:
- Host: a page on another site whose name resolves to 127.0.0.1 (DNS rebinding) would
  talk to the monitor as same-origin; on a loopback-only monitor its Host header gives it away.
- Origin: any web page can POST to http://127.0.0.1:8080 from the user's own browser;
  the browser says where the request comes from, and only the monitor's own page may act.
- Token: beyond loopback, other people can reach the port; they need the token, as a
  bearer header (scripts) or an HttpOnly cookie set by /login (the page).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from finetuned.config import MonitorSettings

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")

COOKIE = "finetuned_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Browsers send one of these on every fetch; anything else means another site asked.
SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1', '[::1]:8080' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(conn: HTTPConnection, settings: MonitorSettings) -> bool:
    """On a loopback monitor, only loopback names: a rebound DNS name is someone else's page."""
    if not is_loopback(settings.host):
        return True  # reachable by name from elsewhere; the token is what protects it
    return is_loopback(host_name(conn.headers.get("host", "")))


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


def session_value(token: str) -> str:
    """The cookie holds a digest, not the token: a leaked cookie jar does not leak the token itself."""
    return hmac.new(token.encode(), b"finetuned-monitor-session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), token.encode())


def token_ok(conn: HTTPConnection, settings: MonitorSettings) -> bool:
    token = settings.token
    if not token:
        return True
    auth = conn.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() == "bearer" and token_matches(given, token):
        return True
    cookie = conn.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_value(token).encode())
