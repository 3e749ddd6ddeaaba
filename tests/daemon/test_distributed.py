"""Training on two ranks under torchrun (gloo, on this CPU), through the real daemon, every control intact."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from helpers import (
    Driver,
    chat_lines,
    drop,
    greedy_answer,
    held_at,
    jobs_by_file,
    logged_losses,
    make_workspace,
    pid_alive,
    queue_status,
    read_json,
    status_of,
    tiny_config,
    train_in_process,
    wait_for,
    with_suites,
    write_jsonl,
)
from safetensors.torch import load_file

from finetuned import asks, checkpoints
from finetuned.config import Config, EarlyStopping, save_config
from finetuned.models import memory
from finetuned.processes.protocol import Completed
from finetuned.worker import tensors


def on_ranks(n: int = 2, **training) -> Config:
    config = tiny_config(mode="independent", batch_size=3, **training)
    # Dropout draws its masks per rank, over the rows each holds: equal losses on 1 and 2 ranks need none.
    config.lora.dropout = 0.0
    config.distributed.launcher = "torchrun"
    config.distributed.nproc_per_node = n
    return config


def one_process(config: Config) -> Config:
    solo = config.model_copy(deep=True)
    solo.distributed.launcher = "none"
    return solo


def solo_losses(tmp_path, config: Config, records) -> list[float]:
    """The same job, uninterrupted, on one process (the real recipe in this test's process)."""
    solo = one_process(config)
    driver = Driver()
    file = write_jsonl(tmp_path / "solo.jsonl", records)
    train_in_process(make_workspace(tmp_path / "solo", solo), solo, "job", file, driver)
    return driver.losses()


def group_pids(daemon) -> list[int]:
    """The agent the daemon started and every process under it (torchrun's ranks)."""
    agent = wait_for(daemon.worker_pid, 60, "the training group", daemon=daemon)
    return [agent, *(p.pid for p in psutil.Process(agent).children(recursive=True))]


def rank_pid(agent: int, rank: int) -> int:
    for proc in psutil.Process(agent).children(recursive=True):
        if "finetuned.worker.rank" in " ".join(proc.cmdline()) and proc.environ().get("RANK") == str(rank):
            return proc.pid
    raise AssertionError(f"no rank {rank} under {agent}")


def test_two_ranks_train_the_losses_of_one_process(tmp_path, tiny_model_dir, start_daemon):
    """Step N sees the same global batch on 2 ranks as on 1: the logged losses agree to 1e-5."""
    config = on_ranks(epochs=2)
    records = chat_lines(50)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "data.jsonl", records)
    wait_for(lambda: status_of(ws, "data.jsonl") == "completed", 300, "the job on two ranks", daemon=daemon)
    job = jobs_by_file(ws)["data.jsonl"]
    two = logged_losses(ws, job["id"])
    solo = solo_losses(tmp_path, config, records)
    assert len(two) == len(solo) > 6
    assert [two[s] for s in sorted(two)] == pytest.approx(solo, abs=1e-5)
    lines = read_json_lines(ws.metrics_file(job["id"]))
    assert all(line["world_size"] == 2 and len(line["rank_memory_gb"]) == 2 for line in lines)
    assert all(m["ram"] > 0.05 for m in lines[-1]["rank_memory_gb"]), "each rank measures its own memory"
    record = read_json(ws.adapter_dir(job["id"]) / "job.json")
    assert record["steps"] == record["total_steps"] == len(solo)
    assert record["examples_trained"] == 2 * 50
    assert "starting 2 ranks with torchrun" in ws.log_file("training", time.strftime("%Y%m%d")).read_text()

    group = group_pids(daemon)
    save_config(ws.config_path, one_process(config))  # read when the next job starts
    drop(ws, "next.jsonl", chat_lines(6, "yo"))
    wait_for(lambda: status_of(ws, "next.jsonl") == "completed", 300, "the next job, on one process", daemon=daemon)
    assert daemon.worker_pid() not in group, "a changed `distributed` restarts the worker"
    wait_for(lambda: not any(pid_alive(p) for p in group), 20, "the group to end")
    assert "world_size" not in read_json_lines(ws.metrics_file(jobs_by_file(ws)["next.jsonl"]["id"]))[-1]


def read_json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pause_preempt_stop_and_skip_on_two_ranks(tmp_path, tiny_model_dir, start_daemon, gate):
    """Each control lands at a step boundary on both ranks; the group (and its loaded model) serves them all."""
    ws = make_workspace(tmp_path / "ws", on_ranks(checkpoint_every_steps=1000))
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "a.jsonl", chat_lines(60))
    drop(ws, "b.jsonl", chat_lines(6, "yo"))
    held_at(ws, "a.jsonl", 2, daemon)
    group = group_pids(daemon)
    assert len(group) >= 3, f"the agent and two ranks: {group}"

    (ws.control / ".pause").touch()
    wait_for(lambda: queue_status(ws, "a.jsonl") == "paused", 60, "a paused", daemon=daemon)
    a = jobs_by_file(ws)["a.jsonl"]
    assert checkpoints.latest(ws.job_checkpoints(a["id"]))[0].step == a["step"] == 2
    (ws.control / ".pause").unlink()
    wait_for(lambda: status_of(ws, "a.jsonl") == "training", 60, "a resumed", daemon=daemon)

    drop(ws, "p.jsonl", chat_lines(4, "hey"), priority=True)  # one step: under the gate
    wait_for(lambda: status_of(ws, "p.jsonl") == "completed", 120, "the priority job", daemon=daemon)
    wait_for(lambda: status_of(ws, "a.jsonl") == "training", 60, "a back after the priority job", daemon=daemon)
    assert jobs_by_file(ws)["a.jsonl"]["runs"][-2]["reason"].startswith("preempt at step 2")

    (ws.control / ".stop").touch()
    wait_for(lambda: status_of(ws, "b.jsonl") == "completed", 120, "b, which the stop let ahead", daemon=daemon)
    wait_for(lambda: status_of(ws, "a.jsonl") == "training", 60, "a after b", daemon=daemon)
    (ws.control / ".skip").touch()
    wait_for(lambda: status_of(ws, "a.jsonl") == "skipped", 60, "a skipped", daemon=daemon)

    a = jobs_by_file(ws)["a.jsonl"]
    reasons = [run["reason"] for run in a["runs"]]
    assert any(r.startswith("stop at step 2") for r in reasons), reasons
    assert a["step"] == 2 and (ws.skipped / "a.jsonl").exists()
    assert not ws.adapter_dir(a["id"]).exists()
    assert daemon.worker_pid() == group[0], "one group served every control: the model stayed loaded"
    assert daemon.stop() == 0
    wait_for(lambda: not any(pid_alive(p) for p in group), 20, "the group to end with the daemon")


def test_daemon_sigkill_leaves_no_rank_and_the_job_moves_between_world_sizes(tmp_path, tiny_model_dir, start_daemon,
                                                                             gate):
    """2 ranks, daemon SIGKILLed: no process survives; the 2-rank checkpoint resumes on 1 process, that one's
    checkpoint on 2 ranks again, and the losses are those of one uninterrupted process."""
    config = on_ranks(checkpoint_every_steps=3, epochs=2)
    records = chat_lines(60)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(4)
    drop(ws, "long.jsonl", records)
    held_at(ws, "long.jsonl", 4, daemon)
    job_dir = ws.job_checkpoints(jobs_by_file(ws)["long.jsonl"]["id"])
    wait_for(lambda: (checkpoints.latest(job_dir) or (None,))[0] is not None, 30, "the checkpoint at step 3")
    group = group_pids(daemon)
    daemon.kill()
    wait_for(lambda: not any(pid_alive(p) for p in group), 20, f"every process of the group {group} to die")

    save_config(ws.config_path, one_process(config))
    gate.hold(8)
    daemon = start_daemon(ws)
    held_at(ws, "long.jsonl", 8, daemon)
    assert daemon.stop() == 0  # checkpoint at 8, back to the queue

    save_config(ws.config_path, config)
    gate.release()
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "long.jsonl") == "completed", 300, "the job, back on two ranks", daemon=daemon)
    job = jobs_by_file(ws)["long.jsonl"]
    assert [run["from_step"] for run in job["runs"]] == [0, 3, 8]
    losses = logged_losses(ws, job["id"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(solo_losses(tmp_path, config, records), abs=1e-5)


def test_a_rank_that_dies_takes_the_group_down_and_the_job_retries(tmp_path, tiny_model_dir, start_daemon, gate):
    ws = make_workspace(tmp_path / "ws", on_ranks(checkpoint_every_steps=2))
    daemon = start_daemon(ws)
    gate.hold(3)
    drop(ws, "job.jsonl", chat_lines(40))
    held_at(ws, "job.jsonl", 3, daemon)
    agent = daemon.worker_pid()
    group = group_pids(daemon)
    os.kill(rank_pid(agent, 1), signal.SIGKILL)
    wait_for(lambda: len(jobs_by_file(ws)["job.jsonl"]["runs"]) >= 2, 60, "the job to be retried", daemon=daemon)
    first = jobs_by_file(ws)["job.jsonl"]["runs"][0]
    assert "rank 1" in first["reason"] and "SIGKILL" in first["reason"], first["reason"]
    wait_for(lambda: not any(pid_alive(p) for p in group), 20, "the failed group to be gone")
    gate.release()
    wait_for(lambda: status_of(ws, "job.jsonl") == "completed", 300, "the retried job", daemon=daemon)
    job = jobs_by_file(ws)["job.jsonl"]
    assert job["runs"][1]["from_step"] == 2, "retried from its last checkpoint"
    assert daemon.worker_pid() != agent


def test_a_hung_rank_is_killed_with_its_group(tmp_path, tiny_model_dir, start_daemon, gate):
    """A rank that stops answering holds the others in a collective: the daemon's step timeout ends them all."""
    config = on_ranks(checkpoint_every_steps=2)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "warm.jsonl", chat_lines(4))  # the group starts (and loads the model) under the default timeout
    wait_for(lambda: status_of(ws, "warm.jsonl") == "completed", 300, "the first job", daemon=daemon)
    config.control.step_timeout_seconds = 15  # the daemon reads it at once; the group's model is loaded already
    save_config(ws.config_path, config)
    gate.hold(2)
    drop(ws, "job.jsonl", chat_lines(40))
    held_at(ws, "job.jsonl", 2, daemon)
    group = group_pids(daemon)
    os.kill(rank_pid(group[0], 1), signal.SIGSTOP)
    gate.release()
    wait_for(lambda: len(jobs_by_file(ws)["job.jsonl"]["runs"]) >= 2, 90, "the hung job to be retried", daemon=daemon)
    config.control.step_timeout_seconds = 1800  # the retry starts a new group, which loads the model again
    save_config(ws.config_path, config)
    assert jobs_by_file(ws)["job.jsonl"]["runs"][0]["reason"].startswith("hung")
    wait_for(lambda: not any(pid_alive(p) for p in group), 20, "every process of the hung group to die")
    wait_for(lambda: status_of(ws, "job.jsonl") == "completed", 300, "the retried job", daemon=daemon)


def test_a_job_stopped_and_resumed_on_two_ranks_with_dropout_logs_the_uninterrupted_losses(tmp_path, tiny_model_dir,
                                                                                         start_daemon, gate):
    """Every rank's random state is in the checkpoint: with dropout, a resumed job on two ranks draws what an
    uninterrupted one does."""
    config = on_ranks(checkpoint_every_steps=1000, epochs=2)
    config.lora.dropout = 0.1
    config.inbox.allow_duplicates = True  # the same file twice: once uninterrupted, once stopped mid-way
    records = chat_lines(50)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "plain.jsonl", records)
    wait_for(lambda: status_of(ws, "plain.jsonl") == "completed", 300, "the uninterrupted job", daemon=daemon)
    gate.hold(3)
    drop(ws, "again.jsonl", records)
    held_at(ws, "again.jsonl", 3, daemon)
    (ws.control / ".stop").touch()
    wait_for(lambda: len(jobs_by_file(ws)["again.jsonl"]["runs"]) == 2, 60, "the stopped job back", daemon=daemon)
    gate.release()
    wait_for(lambda: status_of(ws, "again.jsonl") == "completed", 300, "the resumed job", daemon=daemon)
    jobs = jobs_by_file(ws)
    plain, again = logged_losses(ws, jobs["plain.jsonl"]["id"]), logged_losses(ws, jobs["again.jsonl"]["id"])
    assert jobs["again.jsonl"]["runs"][1]["from_step"] == 3
    assert [again[s] for s in sorted(again)] == pytest.approx([plain[s] for s in sorted(plain)], abs=1e-6)


def test_a_preference_job_on_two_ranks_keeps_pairs_whole_and_an_oom_on_one_rank_splits_both(
        tmp_path, tiny_model_dir, start_daemon, monkeypatch):
    """DPO on two ranks: a pair is never cut between them, so the losses are one process's. At step 3 a forward
    over more than two sequences runs out of memory (injected): only rank 0 holds two pairs there, yet both split
    their micro-batches and do the step again, and its loss stays the same."""
    config = on_ranks(epochs=1, grad_accum=1)
    config.data.packing = False  # a row is one pair: its two sequences, side by side in the forward
    records = [{"prompt": f"Item {i}?", "chosen": f"Item {i}. Done" + " well" * (i % 4), "rejected": f"No {i}."}
               for i in range(30)]
    monkeypatch.setenv(memory.INJECT_ENV, "train:3=2")  # rank 0's two pairs are four sequences; rank 1's two
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "prefs.jsonl", records)
    wait_for(lambda: status_of(ws, "prefs.jsonl") == "completed", 300, "the DPO job on two ranks", daemon=daemon)
    monkeypatch.delenv(memory.INJECT_ENV)
    job = jobs_by_file(ws)["prefs.jsonl"]
    two = logged_losses(ws, job["id"])
    solo = solo_losses(tmp_path, config, records)
    assert len(two) == len(solo) > 3
    assert [two[s] for s in sorted(two)] == pytest.approx(solo, abs=1e-5)
    assert "rewards/margins" in read_json_lines(ws.metrics_file(job["id"]))[-1]
    training_log = ws.log_file("training", time.strftime("%Y%m%d")).read_text()
    assert "out of memory at step 3 with 2 rows a micro-batch a rank; 1 from now on" in training_log


def test_suites_early_stopping_and_the_best_checkpoint_on_two_ranks(tmp_path, tiny_model_dir, start_daemon):
    """Suites are scored on the main rank and the verdict reaches every rank: the job scores, stops and publishes
    the best step's weights as one process does."""
    config = on_ranks(epochs=3, checkpoint_every_steps=2)
    config.training.early_stopping = EarlyStopping(metric="eval:never", patience=2)
    config.evaluation.budget, config.evaluation.max_new_tokens, config.evaluation.publish = 1000.0, 6, "best"
    records = chat_lines(40)
    solo_ws = with_suites(make_workspace(tmp_path / "solo", one_process(config)))
    ws = with_suites(make_workspace(tmp_path / "ws", config))
    driver = Driver()
    train_in_process(solo_ws, one_process(config), "job", write_jsonl(tmp_path / "d.jsonl", records), driver)
    solo = driver.last(Completed).summary
    assert solo["steps"] < solo["total_steps"], "the rule stops one process early"

    daemon = start_daemon(ws)
    drop(ws, "data.jsonl", records)
    wait_for(lambda: status_of(ws, "data.jsonl") == "completed", 300, "the job on two ranks", daemon=daemon)
    job = jobs_by_file(ws)["data.jsonl"]
    record = read_json(ws.adapter_dir(job["id"]) / "job.json")
    assert (record["steps"], record["total_steps"], record["published_step"]) == \
        (solo["steps"], solo["total_steps"], solo["published_step"])
    for key in ("step", "best_step", "metric"):
        assert record["early_stopped"][key] == solo["early_stopped"][key]
    assert record["evaluation"]["scores"] == pytest.approx(solo["evaluation"]["scores"])
    scored = [line for line in read_json_lines(ws.metrics_file(job["id"])) if "eval/hi" in line]
    assert all(line["world_size"] == 2 for line in scored)
    assert [line["step"] for line in scored] == [2, 4, 6] == \
        [line["step"] for line in read_json_lines(solo_ws.metrics_file("job")) if "eval/hi" in line]

    best = checkpoints.path_for(ws.job_checkpoints(job["id"]), record["published_step"])
    assert (best / checkpoints.BEST).exists(), "the best is kept beside the last"
    published = load_file(ws.adapter_dir(job["id"]) / "adapter_model.safetensors")
    saved = {name.replace(".default", ""): weight for name, weight in tensors.load_weights(best).items()}
    assert set(published) == set(saved) and all(published[n].equal(saved[n]) for n in saved)


def test_try_it_on_two_ranks_is_answered_between_steps_and_leaves_the_losses_alone(tmp_path, tiny_model_dir,
                                                                                   start_daemon, gate):
    """A question reaches rank 0 at the step the group is held at; its answer is the step's model's own, and the
    ranks go on in step: the losses are one process's."""
    from finetuned.lifecycle.targets import Target

    config = on_ranks(epochs=2, checkpoint_every_steps=3)
    config.previews.budget, config.previews.max_new_tokens = 1.0, 10
    records = chat_lines(30)
    ws = make_workspace(tmp_path / "ws", config)
    gate.hold(3)
    daemon = start_daemon(ws)
    drop(ws, "data.jsonl", records)
    held_at(ws, "data.jsonl", 3, daemon)
    question = asks.submit(ws, "Say hi number 2.")
    answer = wait_for(lambda: (v := asks.view(ws, question.id)) and v["status"] == "answered" and v, 120,
                      "the answer", daemon=daemon)
    job = jobs_by_file(ws)["data.jsonl"]["id"]
    assert (answer["by"], answer["job_id"], answer["step"], answer["error"]) == ("worker", job, 3, "")
    step_3 = Target("checkpoint", "step 3", ws.base_models / "tiny",
                    checkpoint=checkpoints.path_for(ws.job_checkpoints(job), 3))
    assert answer["text"] and answer["text"] == greedy_answer(step_3, config, "Say hi number 2.")
    gate.release()
    wait_for(lambda: status_of(ws, "data.jsonl") == "completed", 300, "the job on two ranks", daemon=daemon)
    two = logged_losses(ws, job)
    assert [two[s] for s in sorted(two)] == pytest.approx(solo_losses(tmp_path, config, records), abs=1e-5)
