"""The JSON API on a workspace whose state files the daemon's own code wrote (fast: no training)."""

from __future__ import annotations

import json
import re
import threading
import time

from helpers import check_queue_shape
from monitor_helpers import StateWorkspace, metric_lines
from prometheus_client.parser import text_string_to_metric_families

from finetuned.fsio import atomic_write_json, read_json
from finetuned.queue import actions
from finetuned.queue.job import JobStatus


def test_status_reports_the_training_job_with_rates_and_etas(client, state: StateWorkspace):
    body = client.get("/api/status").json()
    assert body["daemon"]["responding"] is True and body["daemon"]["message"] is None
    assert body["daemon"]["heartbeat_age"] < 5
    t = body["training"]
    assert (t["id"], t["file"], t["status"], t["step"], t["total_steps"]) == (
        state.current.id, "current.jsonl", "training", 6, 20)
    assert t["loss"] == 0.5 and t["learning_rate"] == 1e-3 and t["tokens_per_second"] == 200.0
    assert t["seconds_per_step"] == 0.5, "7 s for the 14 steps left"
    assert t["examples_per_second"] == 40 / 20 / 0.5, "one epoch of 40 examples over 20 steps"
    assert t["val_loss"] == 3.5 / 5 and t["line_step"] == 16
    # the rest of this job, then 20 + 10 queued examples at its 0.5 steps per example and 0.5 s per step
    assert body["eta_queue_seconds"] == 7.0 + 30 * 0.5 * 0.5
    assert body["eta_queue_partial"] is False


def test_figures_that_depend_on_the_settings_are_the_daemon_s_not_config_json_s(client, state: StateWorkspace):
    """The daemon publishes them for the settings the job trains with (its own may differ from config.json)."""
    state.ws.config_path.write_text(json.dumps({"previews": {"every_steps": 7}, "training": {"epochs": 5}}))
    body = client.get("/api/status").json()
    assert body["settings"]["preview_every_steps"] == 50, "the job's settings, as the daemon published them"
    assert body["training"]["examples_per_second"] == 40 / 20 / 0.5
    state.config.previews.every_steps, state.config.training.epochs = 0, 3
    state.write()
    body = client.get("/api/status").json()
    assert body["settings"]["preview_every_steps"] == 0 and body["daemon"]["preview_every_steps"] == 0
    assert body["training"]["examples_per_second"] == 40 * 3 / 20 / 0.5
    state.ws.config_path.write_text("{ not json")
    assert client.get("/api/status").json()["settings"]["preview_every_steps"] == 0


def test_a_stale_heartbeat_says_plainly_that_the_daemon_is_not_responding(client, state: StateWorkspace):
    status = read_json(state.ws.status_json)
    status["heartbeat_unix"] -= 42
    atomic_write_json(state.ws.status_json, status)
    daemon = client.get("/api/status").json()["daemon"]
    assert daemon["responding"] is False
    assert daemon["message"].startswith("daemon not responding, data is 4") and daemon["message"].endswith("s old")
    metrics = client.get("/metrics").text
    assert "finetuned_up 0.0" in metrics


def test_queue_keeps_the_spec_shape_and_adds_sizes(client, state: StateWorkspace):
    doc = client.get("/api/queue").json()
    check_queue_shape(doc)
    ids = [e["id"] for e in doc["queue"]]
    assert ids == [state.current.id, state.urgent.id, state.waiting.id], "current first, then by priority"
    assert doc["queue"][1]["examples"] == 10 and doc["queue"][1]["priority"] == "high"
    assert doc["current"]["step"] == "6/20"


def test_history_lists_finished_jobs_with_summary_and_error_report(client, state: StateWorkspace):
    jobs = {j["id"]: j for j in client.get("/api/jobs").json()}
    done, bad = jobs[state.done.id], jobs[state.bad.id]
    assert done["status"] == "completed" and done["summary"]["final_loss"] == 0.3
    assert done["adapter"] == f"models/adapters/{state.done.id}/"
    assert bad["status"] == "failed" and bad["error"]["problems"] == [{"line": 1}]
    only_failed = client.get("/api/jobs", params={"status": "failed"}).json()
    assert [j["id"] for j in only_failed] == [state.bad.id]
    detail = client.get(f"/api/jobs/{state.done.id}").json()
    assert detail["record"]["runs"][0]["reason"] == "completed"
    assert detail["adapter_record"] == {"job_id": state.done.id, "steps": 10}
    assert client.get("/api/jobs/20000101_000000").status_code == 404
    assert client.get("/api/jobs/..%2F..%2Fconfig").status_code in (404, 422)


def test_metrics_take_the_later_line_of_a_repeated_step_and_skip_a_torn_line(client, state: StateWorkspace):
    job = state.current.id
    assert [p["step"] for p in client.get(f"/api/jobs/{job}/metrics").json()["points"]] == [1, 2, 3, 4, 5, 6]
    # a crash after step 6, a resume from the checkpoint at step 5: step 6 is logged again, then 7;
    # the daemon killed mid-write leaves half a line, which must wait rather than break the reader
    with open(state.ws.metrics_file(job), "a") as f:
        f.write(json.dumps({"step": 6, "line_step": 16, "loss": 0.25, "time": time.time()}) + "\n")
        f.write(json.dumps({"step": 7, "line_step": 17, "loss": 0.2, "time": time.time()}) + "\n")
        f.write('{"step": 8, "lo')
    points = client.get(f"/api/jobs/{job}/metrics").json()["points"]
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6, 7]
    assert points[5]["loss"] == 0.25, "the later line of step 6 wins"
    newer = client.get(f"/api/jobs/{job}/metrics", params={"since_step": 5}).json()["points"]
    assert [p["step"] for p in newer] == [6, 7]


def test_model_line_puts_jobs_on_one_axis_with_boundaries(client, state: StateWorkspace):
    line = client.get("/api/metrics/line").json()
    assert line["axis"] == "line_step"
    assert [(s["job_id"], s["start"], s["end"]) for s in line["segments"]] == [
        (state.done.id, 1, 10), (state.current.id, 11, 16)]
    assert [p["x"] for p in line["points"]] == list(range(1, 17))
    assert line["segments"][0]["status"] == "completed" and line["segments"][1]["file"] == "current.jsonl"


def test_model_line_of_independent_jobs_counts_steps_trained(client, state: StateWorkspace):
    """Each independent job counts its steps from 1: the axis becomes steps trained across jobs."""
    state.ws.metrics_file(state.current.id).unlink()
    metric_lines(state.ws, state.current.id, range(1, 4), line_offset=0, t0=time.time())
    line = client.get("/api/metrics/line", params={"max_points": 10}).json()
    assert line["axis"] == "steps"
    assert [(s["start"], s["end"]) for s in line["segments"]] == [(1, 10), (11, 13)]
    assert line["total"] == 13 and len(line["points"]) <= 13


def test_previews_show_rounds_when_present_and_an_empty_state_otherwise(client, state: StateWorkspace):
    assert client.get("/api/previews").json() == {"job_id": state.current.id, "rounds": [], "exact_match": []}
    path = state.ws.previews_file(state.current.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    item = {"prompt": "Say hi number 1.", "expected": "hi 1 hi 1.", "answer": "hi 1 hi 1.", "exact": True}
    rounds = [{"step": s, "time": time.time(), "seconds": 0.4, "items": [item], "exact_match": 1.0} for s in (2, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    body = client.get("/api/previews").json()
    assert body["job_id"] == state.current.id
    assert [r["step"] for r in body["rounds"]] == [2, 4] and body["rounds"][0]["items"][0]["exact"] is True
    assert body["exact_match"] == [{"step": 2, "exact_match": 1.0}, {"step": 4, "exact_match": 1.0}]


def test_controls_create_and_remove_the_control_files(client, state: StateWorkspace):
    ws = state.ws
    assert client.post("/api/control/pause").json()["paused"] is True and ws.pause_file.exists()
    assert client.post("/api/control/resume").json()["message"] == "resumed" and not ws.pause_file.exists()
    assert client.post("/api/control/resume").json()["message"].startswith("not paused")
    client.post("/api/control/stop")
    client.post("/api/control/skip")
    assert ws.stop_file.exists() and ws.skip_file.exists()
    assert client.post("/api/control/explode").status_code == 422


def _answer_requests(state: StateWorkspace, stop: threading.Event) -> None:
    """The daemon's side of queue requests, as its tick does it: real `actions.answer` (queue.json rewritten
    before the reply, as the daemon does), fresh heartbeats."""
    while not stop.is_set():
        for request in actions.pending(state.ws):
            actions.answer(state.ws, state.store, request, before_reply=state.write)
        state.write()
        time.sleep(0.05)


def test_cancel_and_front_go_through_the_daemon(client, state: StateWorkspace):
    stop = threading.Event()
    thread = threading.Thread(target=_answer_requests, args=(state, stop), daemon=True)
    thread.start()
    try:
        second = state._admit("second.jsonl", 5)
        reply = client.post(f"/api/queue/{second.id}/front")
        assert reply.status_code == 200, reply.text
        assert [e["id"] for e in client.get("/api/queue").json()["queue"]][2] == second.id, "front of the normal class"
        assert client.post(f"/api/queue/{state.waiting.id}/cancel").json()["ok"] is True
        assert state.store.get(state.waiting.id).status == JobStatus.SKIPPED
        refused = client.post(f"/api/queue/{state.current.id}/cancel")
        assert refused.status_code == 409 and "not queued" in refused.json()["detail"]
        assert client.post("/api/queue/20000101_000000/cancel").status_code == 404
    finally:
        stop.set()
        thread.join(5)


def test_cancel_answers_at_once_when_the_daemon_is_not_responding(client, state: StateWorkspace):
    status = read_json(state.ws.status_json)
    status["heartbeat_unix"] -= 60
    atomic_write_json(state.ws.status_json, status)
    started = time.time()
    reply = client.post(f"/api/queue/{state.waiting.id}/cancel")
    assert reply.status_code == 503 and "not responding" in reply.json()["detail"]
    assert time.time() - started < 2 and not actions.pending(state.ws)


def test_upload_lands_in_the_inbox_under_a_fresh_name(client, state: StateWorkspace):
    body = b'{"text": "hello"}\n'
    first = client.post("/api/upload", params={"name": "more.jsonl"}, content=body)
    assert first.status_code == 201 and first.json()["file"] == "more.jsonl"
    again = client.post("/api/upload", params={"name": "more.jsonl"}, content=b'{"text": "other"}\n')
    assert again.json()["file"] == "more_2.jsonl", "never overwrite a file waiting in the inbox"
    assert (state.ws.inbox_normal / "more.jsonl").read_bytes() == body
    urgent = client.post("/api/upload", params={"name": "fix.json", "priority": "high"}, content=b"[]")
    assert urgent.json()["folder"] == "inbox/priority/" and (state.ws.inbox_priority / "fix.json").exists()
    assert client.post("/api/upload", params={"name": "notes.txt"}, content=b"x").status_code == 415
    assert client.post("/api/upload", params={"name": "empty.jsonl"}, content=b"").status_code == 400
    leftovers = [p.name for p in state.ws.inbox.rglob("*") if p.name.startswith(".")]
    assert leftovers == [], "no temporary file may stay behind"


def test_prometheus_metrics_are_computed_from_the_files(client, state: StateWorkspace):
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert samples[("finetuned_up", ())] == 1.0
    assert samples[("finetuned_training_step", ())] == 6
    assert samples[("finetuned_training_loss", ())] == 0.5
    assert samples[("finetuned_queue_length", (("priority", "high"),))] == 1
    assert samples[("finetuned_queue_length", (("priority", "normal"),))] == 1
    assert samples[("finetuned_jobs", (("state", "failed"),))] == 1
    assert samples[("finetuned_trained_tokens_total", ())] == 1000 + 600
    assert samples[("finetuned_job_train_seconds_count", (("status", "completed"),))] == 1


def test_health_reports_ram_disk_and_no_gpu_on_this_machine(client, state: StateWorkspace):
    health = client.get("/api/health").json()
    assert health["ram_total_gb"] > 0 and health["disk_free_gb"] > 0
    assert "gpu" in health


def test_openapi_schema_lists_every_area(client):
    schema = client.get("/openapi.json").json()
    tags = {tag for path in schema["paths"].values() for op in path.values() for tag in op.get("tags", [])}
    assert {"status", "queue", "jobs", "metrics", "control", "upload", "prometheus"} <= tags
    assert "/api/events" in schema["paths"] and "/api/control/{action}" in schema["paths"]


def test_the_page_and_its_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "finetuned" in page.text and "/static/app.js" in page.text
    sources = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert sources and all(s.startswith(("/", "data:")) for s in sources), f"no CDN: {sources}"
    for asset in ("app.js", "chart.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"):
        assert client.get(f"/static/{asset}").status_code == 200, asset


WRONG_SHAPES = [{"queue": 5}, {"queue": [5, "x", None], "current": 3}, [], "text", 7, None,
                {"job": 5}, {"job": {"id": 5, "step": "x"}}, {"gpu": [1, "a"]}, {"gpu": "x"},
                {"id": 5, "runs": 3, "summary": "x"}]
GETS = ["/api/status", "/api/queue", "/api/jobs", "/api/health", "/api/previews", "/api/metrics/line", "/metrics"]


def test_state_files_of_the_wrong_shape_read_as_missing_never_a_server_error(client, state: StateWorkspace):
    """Valid JSON, wrong shape (`{"queue": 5}` in control/queue.json): outside damage, read as no file."""
    ws = state.ws
    files = [ws.queue_json, ws.status_json, ws.training_status_json, ws.queue_status_json, ws.system_health_json,
             ws.job_record(state.done.id), ws.adapter_record(state.done.id), ws.config_path]
    for doc in WRONG_SHAPES:
        for path in files:
            path.write_text(json.dumps(doc))
        for url in [*GETS, f"/api/jobs/{state.done.id}", f"/api/jobs/{state.current.id}"]:
            response = client.get(url)
            assert response.status_code < 500, (doc, url, response.text[:300])
    assert client.get(f"/api/jobs/{state.done.id}").status_code == 404, "a damaged record is no record"
    assert client.get("/api/queue").json()["queue"] == []


def test_one_job_s_record_and_adapter_never_show_a_secret(client, state: StateWorkspace):
    """Records written before secrets were redacted hold the monitor's token: the API never sends it."""
    secret = "token-from-an-older-version"
    config = {"monitor": {"token": secret}, "notify": {"webhook": "https://hooks.example/SECRET", "command": None}}
    state.done.summary = {**state.done.summary, "config": config}
    state.store.save(state.done)
    atomic_write_json(state.ws.adapter_record(state.done.id), {"job_id": state.done.id, "config": config})
    body = client.get(f"/api/jobs/{state.done.id}").text
    assert secret not in body and "SECRET" not in body
    record = json.loads(body)["record"]
    assert record["summary"]["config"]["monitor"]["token"] == "***"
    assert record["summary"]["config"]["notify"] == {"webhook": "***", "command": None}


def test_status_shows_the_ranks_and_their_memory_of_a_job_on_several(client, state: StateWorkspace):
    t = client.get("/api/status").json()["training"]
    assert (t["world_size"], t["rank_memory_gb"]) == (1, None), "one process: nothing more to show"
    ranks = [{"ram": 1.25}, {"ram": 1.5, "device_peak": 7.0}]
    with open(state.ws.metrics_file(state.current.id), "a") as f:
        f.write(json.dumps({"step": 7, "line_step": 17, "loss": 0.4, "lr": 1e-3, "tokens": 700, "step_seconds": 0.5,
                            "time": time.time(), "world_size": 2, "rank_memory_gb": ranks}) + "\n")
    t = client.get("/api/status").json()["training"]
    assert (t["world_size"], t["rank_memory_gb"]) == (2, ranks)
