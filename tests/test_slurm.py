"""The real batch scripts against a real (one-node, localhost) SLURM.

Skips with the reason when SLURM cannot start here (not installed, not root, ...). CI installs
Debian's slurmctld/slurmd/slurm-client/munge in .ci/run, so there it runs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from faextract.checkpoint import load_checkpoint
from faextract.embed import EmbedOptions, embed
from faextract.paths import SAMPLE_CHECKPOINT, SAMPLE_CUBE
from faextract.store import open_embeddings
from faextract.testing_slurm import LocalSlurm, SlurmUnavailable
from faextract.train import read_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    try:
        with LocalSlurm(root) as s:
            yield s
    except SlurmUnavailable as err:
        pytest.skip(f"local SLURM unavailable: {err}")


@pytest.fixture(scope="module")
def sample_part(tmp_path_factory):
    """The first 96 days of the bundled sample cube (keeps the jobs short)."""
    import xarray as xr

    path = tmp_path_factory.mktemp("data") / "sample_part.nc"
    with xr.open_dataset(SAMPLE_CUBE, decode_times=False) as ds:
        ds.isel(time=slice(0, 96)).load().to_netcdf(path)
    return path


def _render(tmp_path, args):
    script = tmp_path / "job.sbatch"
    cmd = [
        sys.executable,
        "-m",
        "faextract",
        "slurm",
        *args,
        "--write",
        str(script),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return script


def _logs(tmp_path):
    return "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.out")))


def test_embed_job_array_equals_one_process(slurm, sample_part, tmp_path):
    if not SAMPLE_CHECKPOINT.exists():
        pytest.skip("no bundled checkpoint")
    out = tmp_path / "array.zarr"
    script = _render(
        tmp_path,
        ["embed", str(sample_part), "--checkpoint", str(SAMPLE_CHECKPOINT), "--out", str(out),
         "--tasks", "3", "--cpus", "1", "--time", "00:10:00", "--embed-arg=--batch-size=4"],
    )  # fmt: skip
    res = slurm.sbatch_wait(script, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr + _logs(tmp_path)
    ds = open_embeddings(out)  # complete, or this raises
    assert ds.attrs["complete"] == 1
    ref = tmp_path / "ref.zarr"
    embed([str(sample_part)], str(SAMPLE_CHECKPOINT), str(ref), EmbedOptions(batch_size=4))
    want = open_embeddings(ref)
    for name in want.data_vars:
        if name != "block_done":
            assert np.array_equal(ds[name].values, want[name].values, equal_nan=True), name


def test_compress_job_array_equals_one_process(slurm, sample_part, tmp_path):
    """Three array tasks share one compressed store; it decodes to what one process writes."""
    from faextract.compress.container import CompressOptions, compress, open_compressed

    out = tmp_path / "array.zarr"
    script = _render(
        tmp_path,
        ["compress", str(sample_part), "--out", str(out), "--tasks", "3", "--cpus", "1",
         "--time", "00:10:00", "--compress-arg=--rel-error", "--compress-arg=1e-3"],
    )  # fmt: skip
    res = slurm.sbatch_wait(script, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr + _logs(tmp_path)
    assert out.exists() and not (tmp_path / "array.zarr.partial").exists()
    ref = tmp_path / "ref.zarr"
    compress([str(sample_part)], str(ref), CompressOptions(rel_error=1e-3))
    got, want = open_compressed(str(out)), open_compressed(str(ref))
    for name in want.data_vars:
        assert np.array_equal(got[name].values, want[name].values, equal_nan=True), name


def test_ddp_train_job_then_resume(slurm, sample_part, tmp_path):
    run = tmp_path / "run"
    common = [
        "train", "--out", str(run), "--nodes", "1", "--procs-per-node", "2", "--cpus", "2", "--time", "00:10:00",
        "--set", f"data.paths=[{sample_part}]", "--set", "model.filters=8", "--set", "model.layers=1",
        "--set", "model.embedding_dim=8", "--set", "model.stem_channels=8", "--set", "model.downsample=1",
        "--set", "model.cell_options={attention_dim: 4, temporal_heads: 2}", "--set", "tiles.window=8",
        "--set", "tiles.stride=8", "--set", "train.batch_size=4", "--set", "data.climatology=none",
    ]  # fmt: skip
    script = _render(tmp_path, [*common, "--set", "train.epochs=1"])
    res = slurm.sbatch_wait(script, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr + _logs(tmp_path)
    first = load_checkpoint(run / "last.pt")
    assert first.training.epoch == 1
    # The same job again with one more epoch: the script sees last.pt and resumes.
    script = _render(tmp_path, [*common, "--set", "train.epochs=2"])
    res = slurm.sbatch_wait(script, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr + _logs(tmp_path)
    second = load_checkpoint(run / "last.pt")
    assert second.training.epoch == 2 and second.training.step == 2 * first.training.step
    steps = [int(r["step"]) for r in read_metrics(run) if r["kind"] == "val"]
    assert steps == [first.training.step, second.training.step]
