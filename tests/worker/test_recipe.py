"""The training recipe in-process on builtin:tiny: exact resume, NaN handling, publishing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import Driver, chat_lines, make_workspace, tiny_config, train_in_process, write_jsonl

from finetuned import checkpoints
from finetuned.processes.protocol import Checkpoint, Completed, Failed, FailKind, Step, Yielded


def run_job(ws, config, job_id, file, driver, cache=None):
    return train_in_process(ws, config, job_id, file, driver, cache)


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["continuous", "independent"])
def test_stopped_and_resumed_run_logs_the_same_losses(tmp_path, tiny_model_dir, mode):
    config = tiny_config(mode=mode, checkpoint_every_steps=100)
    config.lora.dropout = 0.1  # resume must restore the RNG too
    records = chat_lines(40)

    ws_a = make_workspace(tmp_path / "a", config)
    plain = Driver()
    run_job(ws_a, config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)
    assert plain.last(Completed)

    ws_b = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=4)
    cache = run_job(ws_b, config, "job", file_b, interrupted)
    assert interrupted.last(Yielded).step == 4
    run_job(ws_b, config, "job", file_b, interrupted, cache)  # same worker, model still loaded
    assert interrupted.losses()[:4] == plain.losses()[:4]
    assert interrupted.losses()[4:] == pytest.approx(plain.losses()[4:], abs=1e-6)
    assert len(interrupted.losses()) == len(plain.losses()) > 6


@pytest.mark.e2e
def test_resume_in_a_new_process_state_matches(tmp_path, tiny_model_dir):
    """A new Recipe (as after a crash) resumes from the checkpoint with the same losses."""
    config = tiny_config(checkpoint_every_steps=3)
    records = chat_lines(40)
    ws_a = make_workspace(tmp_path / "a", config)
    plain = Driver()
    run_job(ws_a, config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)

    ws_b = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    first = Driver(yield_at=5)  # the yield checkpoint at 5 is removed below: resume from the periodic one at 3
    run_job(ws_b, config, "job", file_b, first)
    latest = checkpoints.latest(ws_b.job_checkpoints("job"))
    assert latest[0].step == 5
    shutil.rmtree(latest[1])
    second = Driver()
    run_job(ws_b, config, "job", file_b, second)
    assert second.losses() == pytest.approx(plain.losses()[3:], abs=1e-6)


def test_published_adapter_and_summary(tmp_path, tiny_model_dir):
    config = tiny_config()
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(8)), driver)
    summary = driver.last(Completed).summary
    assert summary["steps"] == summary["total_steps"] >= 1
    assert summary["examples_trained"] == 8
    adapter = ws.adapter_dir("job")
    assert (adapter / "adapter_config.json").exists()
    assert json.loads((adapter / "job.json").read_text())["steps"] == summary["steps"]


def test_nan_loss_fails_the_job_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    config = tiny_config(checkpoint_every_steps=2, learning_rate=1e30)
    config.training.max_grad_norm = 1e30
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(40)), driver)
    failed = driver.last(Failed)
    assert "loss became" in failed.reason and failed.step >= 1
    assert not ws.adapter_dir("job").exists(), "a broken adapter must never be published"


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["continuous", "independent"])
def test_model_line_carries_on_only_in_continuous_mode(tmp_path, tiny_model_dir, mode):
    config = tiny_config(mode=mode)
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    cache = run_job(ws, config, "one", write_jsonl(tmp_path / "one.jsonl", chat_lines(12)), driver)
    first = driver.last(Completed).summary
    run_job(ws, config, "two", write_jsonl(tmp_path / "two.jsonl", chat_lines(12, "yo")), driver, cache)
    second = driver.last(Completed).summary
    assert first["line_step"] == first["steps"]
    if mode == "continuous":
        assert second["line_step"] == first["line_step"] + second["steps"], "the step counter carries on"
    else:
        assert second["line_step"] == second["steps"], "each job starts fresh"
    # Skipped or failed jobs are left out of the line: the next job starts from the base again.
    train_in_process(ws, config, "three", write_jsonl(tmp_path / "three.jsonl", chat_lines(12)), driver, cache,
                     exclude={"one", "two"})
    assert driver.last(Completed).summary["line_step"] == driver.last(Completed).summary["steps"]


@pytest.mark.e2e
def test_full_fine_tuning_resumes_exactly_and_publishes_a_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    config = tiny_config(mode="independent", learning_rate=1e-3)
    config.method = "full"
    records = chat_lines(40)
    plain = Driver()
    run_job(make_workspace(tmp_path / "a", config), config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)
    ws = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=3)
    run_job(ws, config, "job", file_b, interrupted, run_job(ws, config, "job", file_b, interrupted))
    assert interrupted.losses() == pytest.approx(plain.losses(), abs=1e-6)
    model = AutoModelForCausalLM.from_pretrained(ws.adapter_dir("job"))
    assert model.config.hidden_size == 64


@pytest.mark.e2e
def test_previews_are_written_within_budget_and_do_not_change_training(tmp_path, tiny_model_dir):
    config = tiny_config(checkpoint_every_steps=1000)
    config.data.holdout_fraction = 0.2
    records = chat_lines(60)
    plain = Driver()
    config.previews.every_steps = 0
    run_job(make_workspace(tmp_path / "a", config), config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)

    config.previews.every_steps = 1
    config.previews.budget = 1.0  # generous: one round per step until it runs ahead of training time
    config.previews.max_new_tokens = 8
    ws = make_workspace(tmp_path / "b", config)
    watched = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "b.jsonl", records), watched)
    assert watched.losses() == pytest.approx(plain.losses(), abs=1e-6), "previews must not change training"
    rounds = [json.loads(line) for line in ws.previews_file("job").read_text().splitlines()]
    assert rounds, "some preview rounds must run"
    assert len(rounds) <= len(plain.losses())
    spent = sum(r["seconds"] for r in rounds)
    train = sum(m.step_seconds for m in watched.of(Step))
    assert spent <= train + max(r["seconds"] for r in rounds), "previews stay within their budget"
    item = rounds[0]["items"][0]
    assert set(item) == {"prompt", "expected", "answer", "exact"} and item["expected"]
    assert 0.0 <= rounds[-1]["exact_match"] <= 1.0
    assert list((ws.logs / "tensorboard" / "job").glob("events.out.tfevents.*")), "TensorBoard event files"


@pytest.mark.e2e
def test_qlora_trains_on_cpu_and_its_adapter_loads_on_the_unquantised_base(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_config(mode="independent")
    config.method = "qlora"
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver(yield_at=2)
    file = write_jsonl(tmp_path / "d.jsonl", chat_lines(24))
    run_job(ws, config, "job", file, driver, run_job(ws, config, "job", file, driver))
    losses = driver.losses()
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0]
    summary = driver.last(Completed).summary
    assert summary["steps"] == summary["total_steps"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(summary["base_path"]),
                                      ws.adapter_dir("job"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


@pytest.mark.e2e
def test_activation_checkpointing_gives_the_same_losses(tmp_path, tiny_model_dir):
    records = chat_lines(24)
    results = []
    for flag in (False, True):
        config = tiny_config(mode="independent", activation_checkpointing=flag)
        config.lora.dropout = 0.0
        driver = Driver()
        run_job(make_workspace(tmp_path / str(flag), config), config, "job",
                write_jsonl(tmp_path / f"{flag}.jsonl", records), driver)
        results.append(driver.losses())
    assert results[1] == pytest.approx(results[0], abs=1e-5)


@pytest.mark.e2e
def test_every_checkpoint_is_reported_once_it_is_durable(tmp_path, tiny_model_dir):
    """Periodic checkpoints are written beside the next steps; each still reaches the daemon."""
    config = tiny_config(checkpoint_every_steps=2, max_steps=9)
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(100)), driver)
    reported = [m.step for m in driver.of(Checkpoint)]
    assert reported == [2, 4, 6, 8, 9]
    kept = config.lifecycle.keep_checkpoints  # older ones are pruned once the newer are durable
    for step in reported[-kept:]:
        assert checkpoints.path_for(ws.job_checkpoints("job"), step).exists(), f"checkpoint {step} is not on disk"


@pytest.mark.e2e
def test_a_cosine_job_stopped_and_resumed_trains_as_an_uninterrupted_one(tmp_path, tiny_model_dir):
    """The schedule is a function of the step: a resumed job gets the same rates, losses and first_loss."""
    config = tiny_config(checkpoint_every_steps=100, warmup_steps=3, lr_scheduler="cosine", min_lr_ratio=0.1)
    records = chat_lines(40)
    plain = Driver()
    run_job(make_workspace(tmp_path / "a", config), config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)

    ws = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=6)
    run_job(ws, config, "job", file_b, interrupted)
    fresh = Driver()  # a new worker after Ctrl-C: nothing of the first run is in memory
    run_job(ws, config, "job", file_b, fresh)
    lrs = [m.lr for m in plain.of(Step)]
    assert lrs[2] == lrs[3] == config.training.learning_rate and lrs[-1] < lrs[4] < lrs[3], lrs
    assert [m.lr for m in interrupted.of(Step) + fresh.of(Step)] == lrs
    assert interrupted.losses() + fresh.losses() == pytest.approx(plain.losses(), abs=1e-6)
    first = plain.losses()[0]
    summary = fresh.last(Completed).summary
    assert summary["first_loss"] == pytest.approx(first, abs=1e-6), "the job's first step, not the resume step's"
    assert json.loads((ws.adapter_dir("job") / "job.json").read_text())["first_loss"] == summary["first_loss"]


def test_settings_that_cannot_train_fail_as_config_never_as_a_crash(tmp_path, tiny_model_dir):
    config = tiny_config()
    config.lora.target_modules = ["q_proj", "v_prj"]
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(8)), driver)
    failed = driver.last(Failed)
    assert failed.kind is FailKind.CONFIG and "v_prj" in failed.reason and "\n" not in failed.reason
    assert not driver.of(Step)


@pytest.mark.e2e
def test_init_adapter_continues_a_users_adapter(tmp_path, tiny_model_dir):
    """base_model + training.init_adapter: the job starts from that adapter's weights, not fresh ones."""
    from safetensors.torch import load_file

    from finetuned.worker.cache import ModelCache

    config = tiny_config(mode="independent", epochs=3, learning_rate=3e-2)
    records = chat_lines(24)
    ws = make_workspace(tmp_path / "ws", config)
    first = Driver()
    cache = run_job(ws, config, "first", write_jsonl(tmp_path / "first.jsonl", records), first)
    mine = shutil.copytree(ws.adapter_dir("first"), tmp_path / "my-adapter")

    continued = config.model_copy(deep=True)
    continued.training.init_adapter = str(mine)
    loaded = ModelCache(ws).get(continued, Driver().world(), lambda: None)
    saved = load_file(mine / "adapter_model.safetensors")
    for name, tensor in loaded.fresh.items():
        key = name.replace(".default.", ".")
        assert torch.equal(tensor, saved[key]), name

    again = Driver()
    run_job(ws, continued, "second", write_jsonl(tmp_path / "second.jsonl", records), again, cache)
    fresh = Driver()
    run_job(ws, config, "third", write_jsonl(tmp_path / "third.jsonl", records), fresh, cache)
    assert again.losses()[0] < fresh.losses()[0] - 1.0, "it starts where the user's adapter left off"
    assert again.losses()[0] == pytest.approx(first.losses()[-1], abs=1.0)


def test_a_checkpoint_is_taken_only_once_its_step_is_in_the_metrics_log(tmp_path, tiny_model_dir, monkeypatch):
    """A kill right after a checkpoint becomes durable resumes past its step: that step's line must be written
    already, or the job completes with a step missing from its log (bench/chaos.py seed 7, kill 29)."""
    from finetuned.worker import tensors

    config = tiny_config(checkpoint_every_steps=2, log_every_steps=1)
    ws = make_workspace(tmp_path / "ws", config)
    taken: list[tuple[int, list[int]]] = []
    snapshot = tensors.snapshot

    def watched(progress, *args, **kwargs):
        logged = [json.loads(line)["step"] for line in ws.metrics_file("job").read_text().splitlines()]
        taken.append((progress.step, logged))
        return snapshot(progress, *args, **kwargs)

    monkeypatch.setattr(tensors, "snapshot", watched)
    driver = Driver()
    run_job(ws, config, "job", write_jsonl(tmp_path / "a.jsonl", chat_lines(24)), driver)
    assert driver.last(Completed) and len(taken) >= 3
    assert all(step in logged for step, logged in taken), taken
