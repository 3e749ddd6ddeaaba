"""The fast tier (plain `pytest`) is hermetic: its tests open no socket to anything but loopback.

The guard (`tests/hermetic.py`, installed by `tests/conftest.py`) is checked here from a fast-tier test: it is in
force, it refuses a TEST-NET address (RFC 5737, never contacted: the refusal comes before the connect) and a name
that would need DNS, and it lets loopback through. Child processes are not covered (see `hermetic`); they inherit
the offline settings checked at the end.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request

import hermetic
import pytest

REMOTE = ("203.0.113.1", 9)  # TEST-NET-3: documentation only, routed nowhere


@pytest.fixture
def refusals():
    """The refusals this test provokes on purpose, taken off the record so that its teardown passes."""
    yield hermetic.refused
    hermetic.refused.clear()


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        yield server.getsockname()
        thread.join(timeout=10)
        for conn in accepted:
            conn.close()


def test_this_test_runs_guarded_as_the_fast_tier_does():
    assert hermetic.active(), "the fast tier runs guarded: a test of it that is not would be a hole"
    assert socket.socket.connect is hermetic._guarded_connect
    assert socket.getaddrinfo is hermetic._guarded_getaddrinfo


@pytest.mark.parametrize("open_it", [
    pytest.param(lambda: socket.socket().connect(REMOTE), id="connect"),
    pytest.param(lambda: socket.socket().connect_ex(REMOTE), id="connect_ex"),
    pytest.param(lambda: socket.create_connection(REMOTE, timeout=1), id="create_connection"),
    pytest.param(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", REMOTE), id="udp"),
    pytest.param(lambda: socket.socket(socket.AF_INET6).connect(("2001:db8::1", 9)), id="ipv6"),
    pytest.param(lambda: socket.socket(socket.AF_INET6).connect(("::ffff:203.0.113.1", 9)), id="mapped"),
    pytest.param(lambda: socket.getaddrinfo("pypi.org", 443), id="dns"),
    pytest.param(lambda: urllib.request.urlopen("http://203.0.113.1:9/", timeout=1), id="urllib"),
])
def test_another_machine_is_refused_and_recorded(open_it, refusals):
    with pytest.raises(OSError) as caught:
        open_it()
    assert isinstance(caught.value, hermetic.RemoteRefused) or isinstance(
        getattr(caught.value, "reason", None), hermetic.RemoteRefused), caught.value  # urllib wraps it in URLError
    assert len(refusals) == 1 and "refused" in refusals[0], "recorded: the test fails even if the error is swallowed"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_let_through(listener, host):
    with socket.create_connection((host, listener[1]), timeout=10):
        pass
    assert not hermetic.refused


def test_the_rules_of_what_is_this_machine():
    assert all(hermetic.is_local_host(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost",
                                                    "LOCALHOST.", "0.0.0.0", "", "::ffff:127.0.0.1", None))
    assert not any(hermetic.is_local_host(h) for h in ("203.0.113.1", "10.0.0.1", "192.168.1.20", "2001:db8::1",
                                                        "pypi.org", "huggingface.co", "<broadcast>"))
    assert hermetic.is_local_address(socket.AF_UNIX, "/tmp/some.sock")


def test_children_inherit_the_offline_settings():
    """Child processes are not guarded: what keeps them local is in their environment."""
    assert all(os.environ.get(name) == value for name, value in hermetic.OFFLINE_ENV.items())
