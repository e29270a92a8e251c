"""Rendering the batch scripts (no SLURM needed) and the stop-file protocol they rely on."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from faextract.cli import app
from faextract.errors import FaextractError
from faextract.runtime.signals import EXIT_STOPPED, StopFlag
from faextract.slurm import ClusterOptions, render_compress, render_embed, render_train

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


def test_compress_script_is_an_array_of_shards_that_requeues():
    s = render_compress(["in $(x).nc"], "o.zarr", 3, ClusterOptions(account="proj"),
                        ["--rel-error", "1e-3"])  # fmt: skip
    assert "#SBATCH --array=0-2" in s and "#SBATCH --account=proj" in s
    assert "-m faextract compress 'in $(x).nc' --out o.zarr" in s
    assert '--shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" --rel-error 1e-3' in s
    assert "scontrol requeue" in s and "--signal=B:USR1@300" in s
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0
    result = runner.invoke(app, ["slurm", "compress", "x.nc", "--out", "o.zarr", "--tasks", "2",
                                 "--compress-arg=--nrmse", "--compress-arg=1e-2"])  # fmt: skip
    assert result.exit_code == 0 and "--nrmse 1e-2" in result.output


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


HOSTILE_OUT = "o$(touch PWNED) x.zarr"


def test_hostile_paths_stay_file_names_in_rendered_scripts(tmp_path):
    """``$(...)`` or a space in --out or the run directory never runs and never splits: the
    rendered script parses, and its stop-file lines, run in a sandbox, create only the file
    named after the path."""
    s = render_embed(["in.nc"], "ck.pt", HOSTILE_OUT, 2, ClusterOptions())
    t = render_train(HOSTILE_OUT, None, 1, 1, ClusterOptions())
    (tmp_path / HOSTILE_OUT).mkdir()  # the run directory, for the training script's stop file
    for script in (s, t):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        lines = [ln for ln in script.splitlines() if "FAEXTRACT_STOP_FILE" in ln]
        probe = "\n".join(["SLURM_JOB_ID=7", *lines[:1], 'touch "$FAEXTRACT_STOP_FILE"', ""])
        subprocess.run(["bash", "-c", probe], cwd=tmp_path, check=True)
        assert not (tmp_path / "PWNED").exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [HOSTILE_OUT, f"{HOSTILE_OUT}.stop-7"], names
    assert [p.name for p in (tmp_path / HOSTILE_OUT).iterdir()] == ["STOP-7"]


@pytest.mark.parametrize(
    "field, value",
    [("partition", "gpu\nrm -rf ~"), ("account", "a\rb"), ("log_dir", "logs\necho hi"),
     ("extra", ["--qos=high\ntouch PWNED"]), ("log_dir", "my logs")],
)  # fmt: skip
def test_control_characters_in_scheduler_options_are_refused(field, value):
    opts = ClusterOptions(**{field: value})
    with pytest.raises(FaextractError, match="not allowed"):
        render_embed(["in.nc"], "ck.pt", "o.zarr", 2, opts)
    with pytest.raises(FaextractError, match="not allowed"):
        render_train("runs/x", None, 1, 1, opts)
