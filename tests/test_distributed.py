"""DDP on CPU (gloo): two processes give the same training as one with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from faextract.checkpoint import load_checkpoint
from faextract.errors import ConfigError
from faextract.runtime.device import pick_device
from faextract.runtime.distributed import first_host
from faextract.testing import TINY_RUN
from faextract.train import read_metrics

# The tiny run of the other tests, with overlapping windows (more batches) and two epochs.
OVERRIDES = [
    *TINY_RUN,
    "tiles.stride=3",
    "train.epochs=2",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.device=cpu",
]
ARGS = [arg for item in OVERRIDES for arg in ("--set", item)] + ["--deterministic"]


def _run(cmd, env=None):
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, small_nc):
    common = [*ARGS, "--set", f"data.paths=[{small_nc}]"]
    env = {"OMP_NUM_THREADS": "1"}
    _run([sys.executable, "-m", "faextract", "train", "--out", str(tmp_path / "one"), *common], env)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "faextract",
            "train",
            "--out",
            str(tmp_path / "two"),
            *common,
        ],  # fmt: skip
        env,
    )
    one = [r for r in read_metrics(tmp_path / "one") if r["kind"] == "val"]
    two = [r for r in read_metrics(tmp_path / "two") if r["kind"] == "val"]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert float(b["recon"]) == pytest.approx(float(a["recon"]), rel=2e-2)
    wa = load_checkpoint(tmp_path / "one" / "last.pt").state_dict
    wb = load_checkpoint(tmp_path / "two" / "last.pt").state_dict
    diffs = [float((wa[k] - wb[k]).abs().max()) for k in wa if wa[k].is_floating_point()]
    assert max(diffs) < 5e-2
    scale = max(float(wa[k].abs().max()) for k in wa if wa[k].is_floating_point())
    assert max(diffs) < 0.05 * scale


def test_first_host_of_a_nodelist():
    assert first_host("node[03-05,07]") == "node03"
    assert first_host("gpu17,gpu18") == "gpu17"
    assert first_host("localhost") == "localhost"


def test_slurm_environment_becomes_torch_environment(monkeypatch):
    from faextract.runtime import distributed

    # _from_slurm writes os.environ: give it a copy so nothing leaks into other tests.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "cn[01-02]")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    distributed._from_slurm()
    assert os.environ["RANK"] == "1" and os.environ["WORLD_SIZE"] == "2"
    assert os.environ["MASTER_ADDR"] == "cn01" and os.environ["MASTER_PORT"] == str(29500 + 234)
    assert torch.distributed.is_available()


def test_pick_device_gives_each_local_rank_its_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", 1) == torch.device("cuda", 1)
    assert pick_device("cuda", 0) == torch.device("cuda", 0)
    assert pick_device("cuda:1", 0) == torch.device("cuda", 1)
    assert pick_device("cpu", 5) == torch.device("cpu")
    with pytest.raises(ConfigError, match="local rank 2 has no GPU"):
        pick_device("auto", 2)
    with pytest.raises(ConfigError, match="shows 2 CUDA"):
        pick_device("cuda:3", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # --gpus-per-task=1
    assert pick_device("auto", 3) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", 0) == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_device("cuda", 0)
