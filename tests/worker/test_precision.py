"""training.precision: the auto rule, and bf16 training that resumes exactly and stays close to fp32."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import Driver, chat_lines, make_workspace, tiny_config, train_in_process, write_jsonl

from finetuned import checkpoints
from finetuned.models.precision import cpu_flags, native_bf16, resolve
from finetuned.processes.protocol import Completed, Yielded

CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "expected"), [
    (["sse4_2", "avx2", "avx512f", "avx512_bf16"], ("bf16", "avx512_bf16")),
    (["avx2", "amx_tile", "amx_bf16"], ("bf16", "amx_bf16")),
    (["sse4_2", "avx2", "avx512f"], ("fp32", "no native bf16")),  # bf16 emulated: slower than fp32
    ([], ("fp32", "no native bf16")),
])
def test_auto_takes_bf16_only_where_the_cpu_computes_it(flags, expected):
    assert resolve("auto", CPU, flags) == expected


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_a_setting_forces_its_precision_on_any_cpu(setting):
    for flags in ([], ["avx512_bf16"]):
        assert resolve(setting, CPU, flags)[0] == setting


def test_auto_on_this_machine_follows_its_flags():
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert resolve("auto", CPU)[0] == ("bf16" if native else "fp32")
    assert (native_bf16(CPU) is not None) == native


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _bf16_config(**training):
    config = tiny_config(precision="bf16", **training)
    config.lora.dropout = 0.1  # resume must restore the RNG too
    return config


def test_bf16_stopped_and_resumed_run_logs_the_same_losses_bit_for_bit(tmp_path, tiny_model_dir):
    config = _bf16_config(checkpoint_every_steps=100)
    records = chat_lines(40)
    plain = Driver()
    train_in_process(make_workspace(tmp_path / "a", config), config, "job", write_jsonl(tmp_path / "a.jsonl", records),
                     plain)
    assert plain.last(Completed).summary["precision"] == "bf16"

    ws = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=4)
    cache = train_in_process(ws, config, "job", file_b, interrupted)
    assert interrupted.last(Yielded).step == 4
    train_in_process(ws, config, "job", file_b, interrupted, cache)  # same worker, model still loaded
    assert interrupted.losses() == plain.losses()
    assert len(plain.losses()) > 6
    assert json.loads((ws.adapter_dir("job") / "job.json").read_text())["precision"] == "bf16"


def test_bf16_resume_in_a_new_process_state_matches_bit_for_bit(tmp_path, tiny_model_dir):
    config = _bf16_config(checkpoint_every_steps=3)
    records = chat_lines(40)
    plain = Driver()
    train_in_process(make_workspace(tmp_path / "a", config), config, "job", write_jsonl(tmp_path / "a.jsonl", records),
                     plain)
    ws = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    train_in_process(ws, config, "job", file_b, Driver(yield_at=5))
    latest = checkpoints.latest(ws.job_checkpoints("job"))
    shutil.rmtree(latest[1])  # resume from the periodic checkpoint at 3, with a model loaded afresh
    second = Driver()
    train_in_process(ws, config, "job", file_b, second)
    assert second.losses() == plain.losses()[3:]


def test_bf16_losses_stay_close_to_fp32(tmp_path, tiny_model_dir):
    """Autocast rounds matmul inputs to bf16 (8 bits of mantissa): a relative 2e-2 over 10 steps of training."""
    records = chat_lines(40)
    losses = {}
    for precision in ("fp32", "bf16"):
        config = tiny_config(precision=precision, max_steps=10)
        driver = Driver()
        train_in_process(make_workspace(tmp_path / precision, config), config, "job",
                         write_jsonl(tmp_path / f"{precision}.jsonl", records), driver)
        assert json.loads((tmp_path / precision / "models" / "adapters" / "job" / "job.json").read_text()
                          )["precision"] == precision
        losses[precision] = driver.losses()
    assert losses["bf16"] != losses["fp32"], "bf16 must really have run"
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
