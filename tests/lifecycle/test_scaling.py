"""`finetuned doctor`'s distributed line: the devices torchrun's ranks need, the Ray cluster Ray Train needs."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers import make_workspace, tiny_config

from finetuned.config import Config
from finetuned.lifecycle.doctor import FAIL, OK, WARN, check_distributed
from finetuned.processes.launch.ray import probe


def with_launcher(launcher: str, **settings) -> Config:
    config = tiny_config()
    config.distributed.launcher = launcher
    for key, value in settings.items():
        setattr(config.distributed, key, value)
    return config


def test_one_process_needs_nothing(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    check = check_distributed(ws, tiny_config())
    assert (check.level, check.message) == (OK, "one process (distributed.launcher none)")


def test_torchrun_ranks_on_this_cpu(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    check = check_distributed(ws, with_launcher("torchrun", nproc_per_node=2))
    assert check.level == OK and "2 ranks on the CPU (gloo, ddp)" in check.message, check.message
    config = with_launcher("torchrun", nproc_per_node=2, strategy="fsdp")
    config.method = "qlora"
    check = check_distributed(ws, config)
    assert check.level == FAIL and "fsdp does not shard a 4-bit (qlora) base" in check.message
    cores = os.cpu_count() or 1
    check = check_distributed(ws, with_launcher("torchrun", nproc_per_node=cores + 1))
    assert check.level == WARN and "more ranks than cores" in check.message


def test_a_node_that_sees_another_folder_or_none_is_named(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    digest = hashlib.sha256(ws.config_path.read_bytes()).hexdigest()
    assert probe(str(ws.root), digest)[1] is None
    assert "differs from this machine's" in probe(str(ws.root), "0" * 64)[1]
    assert "cannot read" in probe(str(tmp_path / "elsewhere"), digest)[1]


@pytest.mark.ray
def test_a_ray_cluster_with_room_that_shares_the_workspace(tmp_path, tiny_model_dir, ray_cluster):
    ws = make_workspace(tmp_path / "ws")
    config = with_launcher("ray")
    config.distributed.ray.address = ray_cluster.address
    check = check_distributed(ws, config)
    assert check.level == OK and "2 node(s) see" in check.message and "room for 2 workers" in check.message, \
        check.message
    config.distributed.ray.num_workers = 3
    check = check_distributed(ws, config)
    assert check.level == FAIL and "3 workers need 3 CPU (the cluster has 2)" in check.message, check.message
    config.distributed.ray.num_workers, config.distributed.ray.use_gpu = 2, True
    check = check_distributed(ws, config)
    assert check.level == FAIL and "2 GPU (the cluster has 0)" in check.message, check.message


@pytest.mark.ray
def test_no_ray_cluster_at_the_address(tmp_path):
    pytest.importorskip("ray")
    ws = make_workspace(tmp_path / "ws")
    config = with_launcher("ray")
    config.distributed.ray.address = "127.0.0.1:1"
    check = check_distributed(ws, config)
    assert check.level == FAIL and "no Ray cluster at 127.0.0.1:1" in check.message, check.message
