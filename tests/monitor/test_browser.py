"""The page in a real browser (Debian's chromium, headless) on a real daemon training builtin:tiny.

Screenshots go to test-artifacts/ (git-ignored): monitor.png mid-training, monitor-phone.png narrow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, chat_lines, drop, jobs_by_file, last_step, make_workspace, wait_for, write_jsonl
from monitor_helpers import MonitoredDaemon, http, monitor_config

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium phones home, and a closed network refuses it loudly.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"


def _playwright():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        sync_playwright = expect = None
    if sync_playwright is None or not os.path.exists(CHROMIUM):
        missing = "playwright" if sync_playwright is None else CHROMIUM
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: `make test` installs it")
        pytest.skip(f"{missing} is missing (make test installs it)")
    return sync_playwright, expect


@pytest.fixture(scope="module")
def browser():
    sync_playwright, _ = _playwright()
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def expect():
    return _playwright()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A workspace with some history: a short job finishes first, a long one trains, another waits."""
    root = tmp_path_factory.mktemp("browser")
    config = monitor_config(epochs=3, checkpoint_every_steps=8)
    config.data.holdout_fraction = 0.1  # validation loss on the chart, prompts for previews
    config.previews.every_steps = 8
    config.previews.max_new_tokens = 12
    config.previews.budget = 1.0  # builtin:tiny trains faster than it generates
    ws = make_workspace(root / "ws", config)
    drop(ws, "warmup.jsonl", chat_lines(12, "go"), priority=True)
    drop(ws, "arithmetic_20k.jsonl", chat_lines(4000, "hi"))
    drop(ws, "puzzles_v3.jsonl", chat_lines(60, "yo"))
    process = MonitoredDaemon(ws, root / "daemon.out")
    process.wait_url()
    yield process
    process.stop()


@pytest.fixture
def page(browser, daemon: MonitoredDaemon):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(daemon.url)
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


def _long_job_step(daemon: MonitoredDaemon) -> int:
    job = jobs_by_file(daemon.ws).get("arithmetic_20k.jsonl") or {}
    return job.get("step", 0) if job.get("status") == "training" else 0


def test_page_shows_queue_and_loss_and_is_screenshotted(page, daemon: MonitoredDaemon, expect):
    expect(page.get_by_test_id("queue")).to_contain_text("arithmetic_20k.jsonl", timeout=60_000)
    expect(page.get_by_test_id("now-file")).to_have_text("arithmetic_20k.jsonl", timeout=90_000)
    expect(page.get_by_test_id("loss")).not_to_have_text("–", timeout=30_000)
    expect(page.locator("#chart canvas")).to_be_visible()
    expect(page.locator("#hist-table")).to_contain_text("warmup.jsonl")
    # the worker's own preview rounds (every 8 steps here) fill the panel
    expect(page.locator("#prev-table tbody tr").first).to_be_visible(timeout=60_000)
    expect(page.locator("#prev-summary")).to_contain_text("exact match")
    wait_for(lambda: _long_job_step(daemon) >= 24, 120, "a few dozen steps on the chart", daemon=daemon)
    page.wait_for_timeout(1500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "monitor.png"), full_page=True)
    phone = page.context.browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                             is_mobile=True, has_touch=True)
    narrow = phone.new_page()
    narrow.goto(daemon.url)
    expect(narrow.get_by_test_id("loss")).not_to_have_text("–", timeout=15_000)
    narrow.wait_for_timeout(1000)
    width = narrow.evaluate("document.documentElement.scrollWidth")
    narrow.screenshot(path=str(ARTIFACTS / "monitor-phone.png"), full_page=True)
    phone.close()
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"


def test_try_it_answers_a_typed_question_and_says_from_which_step(page, daemon: MonitoredDaemon, expect):
    expect(page.get_by_test_id("now-file")).to_have_text("arithmetic_20k.jsonl", timeout=90_000)
    expect(page.get_by_test_id("try-who")).to_contain_text("training worker")
    box = page.get_by_test_id("try-prompt")
    box.fill("Say hi number 3.")
    box.press("Enter")
    item = page.locator("#try-list li").first
    expect(item).to_contain_text("Say hi number 3.")
    expect(box).to_have_value("")
    expect(item).to_have_attribute("data-status", "answered", timeout=60_000)
    job = jobs_by_file(daemon.ws)["arithmetic_20k.jsonl"]["id"]
    expect(item.get_by_test_id("try-meta")).to_contain_text(f"job {job} at step ")
    question = http("GET", daemon.url + "api/asks")[1]["asks"][0]
    assert question["by"] == "worker" and question["step"] >= 1
    expect(item.locator(".try-a")).to_have_text(question["text"] if question["text"].strip() else "(an empty answer)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator(".tryit").screenshot(path=str(ARTIFACTS / "monitor-try-it.png"))


def test_pause_and_resume_buttons(page, daemon: MonitoredDaemon, expect):
    state = page.get_by_test_id("state")
    expect(state).to_have_text("training", timeout=90_000)
    page.get_by_role("button", name="Pause").click()
    expect(state).to_have_text("paused", timeout=20_000)
    assert daemon.ws.pause_file.exists()
    page.get_by_role("button", name="Resume").click()
    expect(state).to_have_text("training", timeout=20_000)
    assert not daemon.ws.pause_file.exists()


def test_upload_with_the_file_picker_queues_the_file(page, daemon: MonitoredDaemon, expect, tmp_path: Path):
    upload = tmp_path / "fresh_batch.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in chat_lines(16, "new")))
    page.locator("#file-input").set_input_files(str(upload))
    expect(page.locator("#upload-status")).to_contain_text("inbox/normal/", timeout=10_000)
    expect(page.get_by_test_id("queue")).to_contain_text("fresh_batch.jsonl", timeout=20_000)
    assert jobs_by_file(daemon.ws)["fresh_batch.jsonl"]["status"] == "queued"


def test_a_frozen_daemon_is_called_out_with_the_age_of_the_data(page, daemon: MonitoredDaemon, expect):
    """SIGSTOP freezes the daemon (and its monitor): the page itself must notice the silence."""
    expect(page.get_by_test_id("state")).to_have_text("training", timeout=60_000)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        alert = page.locator("#alert")
        expect(alert).to_contain_text("Daemon not responding, data is 1", timeout=20_000)
        expect(page.get_by_test_id("state")).to_have_text("not responding")
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    expect(alert).to_be_hidden(timeout=15_000)
    expect(page.get_by_test_id("state")).to_have_text("training")


def test_skip_asks_for_confirmation(page, daemon: MonitoredDaemon, expect):
    expect(page.get_by_test_id("now-file")).to_have_text("arithmetic_20k.jsonl", timeout=60_000)
    page.get_by_role("button", name="Skip").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("arithmetic_20k.jsonl")
    dialog.get_by_role("button", name="Keep training").click()
    expect(dialog).to_be_hidden()
    assert not daemon.ws.skip_file.exists(), "keeping it must not skip"
    page.get_by_role("button", name="Skip").click()
    dialog.get_by_role("button", name="Skip job").click()
    wait_for(lambda: jobs_by_file(daemon.ws)["arithmetic_20k.jsonl"]["status"] == "skipped", 30,
             "the job to be skipped", daemon=daemon)
    expect(page.locator("#hist-table")).to_contain_text("skipped", timeout=10_000)
    expect(page.get_by_test_id("now-file")).not_to_have_text("arithmetic_20k.jsonl", timeout=20_000)



@pytest.mark.daemon  # a real daemon of its own, on two torchrun ranks
def test_a_job_on_two_ranks_shows_them_and_each_ones_memory(browser, expect, tmp_path: Path, tiny_model_dir: Path):
    config = monitor_config(epochs=3)
    config.distributed.launcher, config.distributed.nproc_per_node = "torchrun", 2
    ws = make_workspace(tmp_path / "ws", config)
    drop(ws, "long.jsonl", chat_lines(4000, "hi"))
    daemon = MonitoredDaemon(ws, tmp_path / "daemon.out")
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = context.new_page()
        page.goto(daemon.wait_url())
        ranks = page.get_by_test_id("world")
        expect(ranks).to_have_text(re.compile(r"^2 · \d+\.\d / \d+\.\d GB$"), timeout=120_000)
        assert "rank 1: " in (ranks.get_attribute("title") or ""), "each rank's memory in the tooltip"
    finally:
        context.close()
        daemon.stop()


@pytest.fixture(scope="module")
def preference_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A DPO job held at step 12 (the step gate), its rewards logged, two suites scored every 4 steps."""
    from helpers import Gate

    root = tmp_path_factory.mktemp("preference")
    config = monitor_config(epochs=2, checkpoint_every_steps=100)
    config.evaluation.every_steps, config.evaluation.budget, config.evaluation.max_new_tokens = 4, 1000.0, 4
    ws = make_workspace(root / "ws", config)
    ws.evals.mkdir()
    write_jsonl(ws.evals / "items.jsonl", [{"prompt": f"Item {i}?", "expected": "Done", "scorer": "contains"}
                                           for i in range(3)])
    write_jsonl(ws.evals / "pick.jsonl", [{"prompt": "Item 1?", "choices": ["Item 1. Done.", "Nope"],
                                           "expected": "Item 1. Done.", "scorer": "choice"}])
    gate = Gate(root / "gate")
    gate.hold(12)
    drop(ws, "prefs.jsonl", [{"prompt": f"Item {i}?", "chosen": f"Item {i}. Done.", "rejected": f"Item {i}. Nope."}
                             for i in range(60)])
    process = MonitoredDaemon(ws, root / "daemon.out", gate)
    process.wait_url()
    wait_for(lambda: last_step(ws, "prefs.jsonl") >= 12, 120, "the DPO job", daemon=process)
    yield process
    process.stop()


def test_a_preference_job_shows_its_rewards_under_the_loss(browser, expect, preference_daemon):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        page.goto(preference_daemon.url)
        expect(page.get_by_test_id("preference")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("preference-note")).to_contain_text("accuracy", timeout=30_000)
        expect(page.locator("#pref-chart canvas")).to_be_visible()
    finally:
        context.close()
    with urllib.request.urlopen(preference_daemon.url + "metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'finetuned_training_objective_metric{name="rewards/accuracies"}' in text
    assert 'name="eval/' not in text, "suite scores are not an objective's metric"


def test_suite_scores_are_charted_and_exported(browser, expect, preference_daemon):
    (metrics,) = preference_daemon.ws.metrics.glob("*.jsonl")  # the job is held at step 12: nothing more comes
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    scored = [p["step"] for p in logged if "eval/items" in p]
    assert scored == [4, 8, 12], "every 4 steps (the budget is lifted)"
    assert all(0 <= p["eval/pick"] <= 1 for p in logged if "eval/pick" in p)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        page.goto(preference_daemon.url)
        expect(page.get_by_test_id("evaluation")).to_be_visible(timeout=30_000)
        legend = page.get_by_test_id("evaluation-legend")
        expect(legend).to_contain_text("items", timeout=30_000)
        expect(legend).to_contain_text("pick")
        expect(page.get_by_test_id("evaluation-note")).to_contain_text(f"step {scored[-1]}")
        expect(page.locator("#evals-chart canvas")).to_be_visible()
    finally:
        context.close()
    with urllib.request.urlopen(preference_daemon.url + "metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'finetuned_eval_score{suite="items"}' in text and 'finetuned_eval_score{suite="pick"}' in text
