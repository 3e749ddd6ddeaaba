"""Who may read and steer the monitor: loopback by default, a token beyond it, never another site."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from monitor_helpers import LOCAL, StateWorkspace

from finetuned.config import ConfigError, MonitorSettings, load_config
from finetuned.monitor.app import create_app
from finetuned.monitor.deps import get_settings
from finetuned.monitor.security import (
    COOKIE,
    FREE_FAILURES,
    SESSION_SECONDS,
    Throttle,
    TooManyAttempts,
    host_name,
    new_session,
    session_value,
)
from finetuned.monitor.server import MonitorRefused, MonitorServer
from finetuned.monitor.upload import UploadError, safe_name

TOKEN = "correct-horse-battery"  # 21 characters: monitor.token takes 16 or more


def test_beyond_loopback_without_a_token_refuses_to_start(state: StateWorkspace):
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.lan"):
        with pytest.raises(MonitorRefused, match=r"monitor\.token"):
            MonitorServer(state.ws, MonitorSettings(host=host, port=0))
    MonitorServer(state.ws, MonitorSettings(host="0.0.0.0", port=0, token=TOKEN))  # allowed, not started
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        MonitorServer(state.ws, MonitorSettings(host=host, port=0))


def test_finetuned_run_says_why_in_one_line_and_exits_2(state: StateWorkspace):
    config = json.loads(state.ws.config_path.read_text())
    config["monitor"]["host"] = "0.0.0.0"
    state.ws.config_path.write_text(json.dumps(config))
    state.ws.status_json.unlink()
    result = subprocess.run([sys.executable, "-m", "finetuned", "run", "--root", str(state.ws.root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "monitor.token" in lines[0], result.stderr


def test_a_cross_site_post_is_refused(client: TestClient, state: StateWorkspace):
    """Another web page in the user's browser must not pause, skip or feed the daemon."""
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1:9999"}, {"Sec-Fetch-Site": "cross-site"}):
        for method, path in (("post", "/api/control/pause"), ("post", "/api/upload?name=a.jsonl")):
            response = client.request(method, path, headers=headers, content=b'{"text": "x"}\n')
            assert response.status_code == 403, (headers, path, response.text)
    assert not state.ws.pause_file.exists()
    assert not (state.ws.inbox_normal / "a.jsonl").exists()
    own = client.post("/api/control/pause", headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"})
    assert own.status_code == 200 and state.ws.pause_file.exists(), "the monitor's own page may act"


def test_a_rebound_host_name_is_refused_on_a_loopback_monitor(client: TestClient):
    """DNS rebinding: evil.example resolving to 127.0.0.1 makes its page same-origin; its Host gives it away."""
    assert client.get("/api/status", headers={"Host": "evil.example:8080"}).status_code == 403
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
    assert client.get("/api/status", headers={"Host": "localhost:8080"}).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1:8080@evil.example", "127.0.0.1:8080/evil.example", "127.0.0.1:99999",
                                  "127.0.0.1:", "[::1]evil.example", "[::1", "localhost:80:80", "127.0.0.1.5",
                                  "evil.example#127.0.0.1", "user@127.0.0.1", "127.0.0.1,evil.example", ""])
def test_a_host_header_that_is_not_a_host_is_refused(client: TestClient, host: str):
    """Issue 23, item 20: split at the last ':', `127.0.0.1:PORT@evil.example` passed as 127.0.0.1."""
    assert host_name(host) is None
    assert client.get("/api/status", headers={"Host": host}).status_code == 403, host


def test_a_host_header_is_parsed_strictly():
    for host, name in (("127.0.0.1:8080", "127.0.0.1"), ("LOCALHOST", "localhost"), ("[::1]:8080", "::1"),
                       ("[::1]", "::1"), ("127.0.0.2", "127.0.0.2"), ("myhost.lan.:8080", "myhost.lan.")):
        assert host_name(host) == name, host
    for host in ("127.0.0.1:8080@evil.example", "[::1]:8080@evil.example", "127.0.0.1:8080 evil.example"):
        assert host_name(host) is None, host


def test_a_malformed_host_is_refused_beyond_loopback_too(token_client: TestClient):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get("/api/status", headers=headers).status_code == 200
    assert token_client.get("/api/status", headers={**headers, "Host": "a.lan:80@b"}).status_code == 403


@pytest.fixture
def token_client(state: StateWorkspace):
    settings = MonitorSettings(host="0.0.0.0", port=0, token=TOKEN)
    app = create_app(state.ws, settings)
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app, base_url="http://192.168.1.20:8080", follow_redirects=False) as c:
        yield c


def test_beyond_loopback_every_request_needs_the_token(token_client: TestClient):
    assert token_client.get("/api/status").status_code == 401
    assert token_client.post("/api/control/pause").status_code == 401
    assert token_client.get("/metrics").status_code == 401
    assert token_client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert token_client.get("/").headers["location"] == "/login"


def test_login_sets_an_http_only_cookie_that_opens_the_page(token_client: TestClient):
    assert token_client.get("/login").status_code == 200
    wrong = token_client.post("/login", content=b"token=nope",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    right = token_client.post("/login", content=f"token={TOKEN}".encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert token_client.get("/api/status").status_code == 200, "the cookie now authorises the API"
    assert token_client.get("/").status_code == 200


def test_login_from_another_site_is_refused(token_client: TestClient):
    response = token_client.post("/login", content=f"token={TOKEN}".encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"})
    assert response.status_code == 403


@pytest.mark.parametrize(("raw", "expected"), [
    ("../../etc/cron.d/evil.jsonl", "evil.jsonl"),
    ("..\\..\\windows\\x.json", "x.json"),
    (".hidden.jsonl", "hidden.jsonl"),
    ("data set (v2).JSONL", "data_set_(v2).jsonl"),
    ("/abs/path/ok.jsonl", "ok.jsonl"),
    ("a\x00b\n.jsonl", "a_b.jsonl"),
    ("....jsonl", "upload.jsonl"),
    ("données.jsonl", "données.jsonl"),
])
def test_upload_names_are_sanitised(raw: str, expected: str):
    assert safe_name(raw) == expected


@pytest.mark.parametrize("raw", ["evil.sh", "x.jsonl.part", "noext", "../"])
def test_upload_names_without_a_data_extension_are_refused(raw: str):
    with pytest.raises(UploadError):
        safe_name(raw)


def test_a_traversal_upload_name_lands_inside_the_inbox(client: TestClient, state: StateWorkspace):
    response = client.post("/api/upload", params={"name": "../../../config.jsonl"}, content=b'{"text": "x"}\n')
    assert response.status_code == 201 and response.json()["file"] == "config.jsonl"
    assert (state.ws.inbox_normal / "config.jsonl").exists()
    assert not (state.ws.root.parent / "config.jsonl").exists()


@pytest.mark.parametrize(("body", "status", "words"), [
    (json.dumps({"distributed": {"launcher": "ray", "ray": {"address": "203.0.113.7:6379"}}}), 400, "'distributed'"),
    (json.dumps({"notify": {"command": "touch pwned"}}), 400, "'notify'"),
    (json.dumps({"base_model": "/home/someone/evil-model"}), 400, "not under the workspace's models/"),
    ("[" * 30_000 + "]" * 30_000, 400, "nested over 16 levels"),
    ("{" + " " * 2**20 + "}", 413, "over 64 KiB"),
])
def test_an_uploaded_file_s_settings_are_checked_before_they_are_kept(client: TestClient, state: StateWorkspace,
                                                                       body: str, status: int, words: str):
    """Issue 23, items 10 and 11: the monitor's upload accepted any NAME.jsonl.config.json."""
    response = client.post("/api/upload", params={"name": "a.jsonl.config.json"}, content=body.encode())
    assert response.status_code == status and words in response.json()["detail"], response.text
    assert list(state.ws.inbox_normal.iterdir()) == [], "nothing is kept"
    own = client.post("/api/upload", params={"name": "a.jsonl.config.json"},
                      content=json.dumps({"training": {"epochs": 2}}).encode())
    assert own.status_code == 201 and (state.ws.inbox_normal / "a.jsonl.config.json").exists(), own.text


def test_an_oversize_upload_is_refused_and_leaves_nothing(client: TestClient, state: StateWorkspace):
    small = MonitorSettings(max_upload_mb=1 / 1024)  # 1 KiB
    client.app.dependency_overrides[get_settings] = lambda: small
    declared = client.post("/api/upload", params={"name": "big.jsonl"}, content=b"x" * 4096)
    assert declared.status_code == 413

    def chunks():  # no Content-Length: the cap must hold while streaming
        for _ in range(8):
            yield b"y" * 512

    streamed = client.post("/api/upload", params={"name": "big.jsonl"}, content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert list(state.ws.inbox_normal.iterdir()) == []


def test_a_short_token_is_a_clear_config_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"monitor": {"host": "0.0.0.0", "token": "s3cret"}}))
    with pytest.raises(ConfigError, match=r"monitor\.token: .*at least 16 characters"):
        load_config(tmp_path / "config.json")
    MonitorSettings(token="x" * 16)


def test_wrong_tokens_are_throttled_per_address(token_client: TestClient, monkeypatch):
    """~1,000 guesses a second were possible; now a few typos are free, then the address waits, longer each time."""
    from finetuned.monitor import deps
    from finetuned.monitor.routes import page

    for module in (deps, page):  # shorter than the first 1 s wait, so both refusals fall within it
        monkeypatch.setattr(module, "TARPIT_SECONDS", 0.2)
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    for _ in range(FREE_FAILURES):
        assert token_client.get("/api/status", headers=wrong).status_code == 401
    refused = token_client.get("/api/status", headers=wrong)
    assert refused.status_code == 401, "the first failure past the free ones locks the address"
    started = time.monotonic()
    locked = token_client.get("/api/status", headers=wrong)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1, "the next guess waits"
    assert time.monotonic() - started >= 0.2, "and is answered slowly"
    form = token_client.post("/login", content=b"token=another-wrong-guess",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 429, "the login form shares the count"


def test_a_stranger_s_wrong_guesses_never_lock_the_owner_out(token_client: TestClient):
    """On loopback every local account is 127.0.0.1: the right token passes however many wrong ones came first."""
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    for _ in range(FREE_FAILURES + 1):
        token_client.get("/api/status", headers=wrong)
    assert token_client.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    form = token_client.post("/login", content=f"token={TOKEN}".encode(), follow_redirects=False,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 303, "the owner logs in at once"


def test_the_throttle_doubles_the_wait_and_forgets_a_success():
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    for _ in range(FREE_FAILURES):
        assert not throttle.attempt("a", "guess", TOKEN)
    assert throttle.wait_seconds("a") == 0
    waits = []
    for _ in range(4):
        assert not throttle.attempt("a", "guess", TOKEN)
        waits.append(throttle.wait_seconds("a"))
        with pytest.raises(TooManyAttempts):
            throttle.attempt("a", "another guess", TOKEN)
        now[0] += waits[-1]
    assert waits == [1, 2, 4, 8]
    assert throttle.wait_seconds("b") == 0, "another address is not held up"
    assert throttle.attempt("a", TOKEN, TOKEN) and throttle.wait_seconds("a") == 0


def test_the_session_cookie_expires_and_cannot_be_forged(token_client: TestClient):
    now = time.time()
    for value, ok in ((new_session(TOKEN, now), True),
                      (new_session(TOKEN, now - SESSION_SECONDS - 1), False),  # a day old: expired
                      (session_value(TOKEN, int(now) + 10**9).replace(".", ".0", 1), False),  # tampered
                      (f"{int(now) + 10**9}.{'0' * 64}", False),  # a far expiry, unsigned
                      (new_session("another-token-entirely", now), False)):  # signed with another token
        token_client.cookies.set(COOKIE, value)
        assert (token_client.get("/api/status").status_code == 200) is ok, value
    right = token_client.post("/login", content=f"token={TOKEN}".encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert f"Max-Age={SESSION_SECONDS}" in right.headers["set-cookie"]


def test_the_schema_and_the_assets_are_behind_the_host_and_token_checks(token_client: TestClient,
                                                                         client: TestClient):
    assert token_client.get("/openapi.json").status_code == 401
    assert token_client.get("/static/app.js").status_code == 401
    assert token_client.get("/static/app.css").status_code == 200, "the login page needs its stylesheet"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get("/openapi.json", headers=bearer).json()["info"]["title"] == "finetuned monitor"
    assert token_client.get("/static/app.js", headers=bearer).status_code == 401, "the page's assets: its cookie"
    token_client.post("/login", content=f"token={TOKEN}".encode(),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert token_client.get("/static/app.js").status_code == 200
    rebound = {"Host": "evil.example:8080"}
    for path in ("/openapi.json", "/static/app.js", "/static/app.css"):
        assert client.get(path, headers=rebound).status_code == 403, path
        assert client.get(path).status_code == 200, path


def test_upload_names_are_limited_in_bytes_not_characters(client: TestClient, state: StateWorkspace):
    fits = "漢" * 78 + ".jsonl"  # 240 bytes, 84 characters
    response = client.post("/api/upload", params={"name": fits}, content=b'{"text": "x"}\n')
    assert response.status_code == 201 and response.json()["file"] == fits
    again = client.post("/api/upload", params={"name": fits}, content=b'{"text": "y"}\n')
    assert again.status_code == 201, "a second upload of it gets `_2` and still fits"
    over = client.post("/api/upload", params={"name": "漢" * 90 + ".jsonl"}, content=b'{"text": "x"}\n')
    assert over.status_code == 400 and "bytes" in over.json()["detail"]
    assert sorted(len(p.name.encode()) for p in state.ws.inbox_normal.iterdir())[-1] <= 255
