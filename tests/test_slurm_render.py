"""Rendering the batch scripts (no SLURM needed) and the stop-file protocol they rely on."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from faextract.cli import app
from faextract.errors import FaextractError
from faextract.signals import EXIT_STOPPED, StopFlag
from faextract.slurm import ClusterOptions, render_embed, render_train

runner = CliRunner()


def test_embed_script_is_an_array_with_shards():
    s = render_embed(
        ["a b.nc"], "ck.pt", "out.zarr", 4, ClusterOptions(partition="gpu", account="proj", gpus=1)
    )
    assert (
        "#SBATCH --array=0-3" in s
        and "#SBATCH --partition=gpu" in s
        and "#SBATCH --account=proj" in s
    )
    assert "#SBATCH --gres=gpu:1" in s and "--signal=B:USR1@300" in s
    assert '--shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"' in s
    assert "'a b.nc'" in s, "paths are shell-quoted"
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0


def test_train_script_uses_srun_torchrun_and_resumes():
    s = render_train(
        "runs/x",
        "configs/sample.yaml",
        2,
        4,
        ClusterOptions(gpus=4, time="1-00:00:00"),
        ["--set", "train.epochs=3"],
    )
    assert (
        "#SBATCH --nodes=2" in s and "--nproc-per-node=4" in s and "#SBATCH --gpus-per-node=4" in s
    )
    assert "srun" in s and "torch.distributed.run" in s and "rdzv-endpoint" in s
    assert 'RESUME="--resume"' in s and "scontrol requeue" in s
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0


def test_bad_time_is_a_clear_error():
    with pytest.raises(FaextractError, match="--time"):
        render_embed(["a.nc"], "c.pt", "o.zarr", 2, ClusterOptions(time="2 hours"))


def test_cli_prints_script():
    result = runner.invoke(
        app, ["slurm", "embed", "x.nc", "--checkpoint", "c.pt", "--out", "o.zarr", "--tasks", "2"]
    )
    assert result.exit_code == 0 and "#SBATCH --array=0-1" in result.output


def test_stop_file_requests_a_stop(tmp_path, monkeypatch):
    stop = tmp_path / "STOP"
    monkeypatch.setenv("FAEXTRACT_STOP_FILE", str(stop))
    with StopFlag() as flag:
        assert not flag.requested
        stop.touch()
        assert flag.requested
    assert EXIT_STOPPED == 75
