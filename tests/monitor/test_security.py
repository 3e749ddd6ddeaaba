"""Who may read and steer the monitor: loopback by default, a token beyond it, never another site."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from monitor_helpers import LOCAL, StateWorkspace

from finetuned.config import MonitorSettings
from finetuned.monitor.app import create_app
from finetuned.monitor.deps import get_settings
from finetuned.monitor.security import COOKIE
from finetuned.monitor.server import MonitorRefused, MonitorServer
from finetuned.monitor.upload import UploadError, safe_name


def test_beyond_loopback_without_a_token_refuses_to_start(state: StateWorkspace):
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.lan"):
        with pytest.raises(MonitorRefused, match=r"monitor\.token"):
            MonitorServer(state.ws, MonitorSettings(host=host, port=0))
    MonitorServer(state.ws, MonitorSettings(host="0.0.0.0", port=0, token="s3cret"))  # allowed, not started
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


@pytest.fixture
def token_client(state: StateWorkspace):
    settings = MonitorSettings(host="0.0.0.0", port=0, token="s3cret")
    app = create_app(state.ws, settings)
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app, base_url="http://192.168.1.20:8080", follow_redirects=False) as c:
        yield c


def test_beyond_loopback_every_request_needs_the_token(token_client: TestClient):
    assert token_client.get("/api/status").status_code == 401
    assert token_client.post("/api/control/pause").status_code == 401
    assert token_client.get("/metrics").status_code == 401
    assert token_client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert token_client.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert token_client.get("/").headers["location"] == "/login"


def test_login_sets_an_http_only_cookie_that_opens_the_page(token_client: TestClient):
    assert token_client.get("/login").status_code == 200
    wrong = token_client.post("/login", content=b"token=nope",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    right = token_client.post("/login", content=b"token=s3cret",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret" not in cookie
    assert token_client.get("/api/status").status_code == 200, "the cookie now authorises the API"
    assert token_client.get("/").status_code == 200


def test_login_from_another_site_is_refused(token_client: TestClient):
    response = token_client.post("/login", content=b"token=s3cret", headers={
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
