"""The fast tier reaches nothing but this machine: a guard on this process's sockets.

While a test of the fast tier runs (its fixtures included), `socket.socket.connect`, `connect_ex`, `sendto` and
`sendmsg` refuse any address that is not loopback (127.0.0.0/8, ::1, `localhost`, the unspecified address, which
connects here) and `socket.getaddrinfo` refuses to resolve any other name; Unix sockets pass. A refusal raises
`RemoteRefused` (a ConnectionRefusedError, so code sees what it would see offline) and is recorded, and the test
fails at teardown even if the code swallowed the error. Tests marked with one of `OUTSIDE` (PyPI downloads, Ray's
cluster on the node's address, a real daemon, the real SmolLM2) run unguarded.

Only this process is guarded: a child it starts (a worker, `finetuned` on the command line, pip) runs unguarded.
For those the session sets the Hugging Face libraries offline (`OFFLINE_ENV`, inherited by every child), and what
a child of the fast tier runs is kept local by the test itself (pip with no index, model paths on disk).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

# Markers whose tests may leave the machine, or are not part of the fast tier: unguarded.
OUTSIDE = ("network", "ray", "daemon", "slow")

# For the whole session and every child process: no Hugging Face download, no telemetry.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class RemoteRefused(ConnectionRefusedError):
    """A fast-tier test tried to reach another machine."""


refused: list[str] = []  # what was refused since the current test began
_guarding = False
_originals: dict[str, Any] = {}


def active() -> bool:
    """True while the current test runs guarded."""
    return _guarding


def is_local_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0].rstrip(".").lower()  # [::1], fe80::1%eth0, localhost.
    if host in ("", "<broadcast>") or host in _LOCAL_NAMES or host.endswith(".localhost"):
        return host != "<broadcast>"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: resolving it asks a DNS server
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def is_local_address(family: int, address: Any) -> bool:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # Unix sockets, netlink: this machine
    if isinstance(address, tuple) and address:
        return is_local_host(address[0])
    return False


def _refuse(what: str) -> None:
    message = (f"the fast tier reaches no other machine: {what} refused "
               "(mark the test `network` if it must download)")
    refused.append(message)
    raise RemoteRefused(message)


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if _guarding and not is_local_address(self.family, address):
        _refuse(f"connect to {address!r}")
    return _originals["connect"](self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if _guarding and not is_local_address(self.family, address):
        _refuse(f"connect_ex to {address!r}")
    return _originals["connect_ex"](self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
    address = args[-1]  # sendto(data, address) or sendto(data, flags, address)
    if _guarding and not is_local_address(self.family, address):
        _refuse(f"sendto {address!r}")
    return _originals["sendto"](self, data, *args)


def _guarded_sendmsg(self: socket.socket, buffers: Any, ancdata: Any = (), flags: int = 0,
                     address: Any = None) -> int:
    if _guarding and address is not None and not is_local_address(self.family, address):
        _refuse(f"sendmsg to {address!r}")
    if address is None:
        return _originals["sendmsg"](self, buffers, ancdata, flags)
    return _originals["sendmsg"](self, buffers, ancdata, flags, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if _guarding and not is_local_host(host):
        _refuse(f"resolving {host!r}")
    return _originals["getaddrinfo"](host, *args, **kwargs)


def install() -> None:
    """Wrap this process's socket calls (once); they refuse only while `guard(True)` is in force."""
    if _originals:
        return
    for name, wrapper in (("connect", _guarded_connect), ("connect_ex", _guarded_connect_ex),
                          ("sendto", _guarded_sendto), ("sendmsg", _guarded_sendmsg)):
        _originals[name] = getattr(socket.socket, name)
        setattr(socket.socket, name, wrapper)
    _originals["getaddrinfo"] = socket.getaddrinfo
    socket.getaddrinfo = _guarded_getaddrinfo


def guard(on: bool) -> None:
    global _guarding
    _guarding = on
    refused.clear()
