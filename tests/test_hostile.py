"""Hostile input, table-driven: every case is a command a careless or hostile user could type.

For each: exit status 2 (1 for environment faults), no traceback, one line that names the
problem, nothing complete-looking left behind, and every input bitwise unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faextract.cli import app
from faextract.testing import TINY_RUN, assert_one_line_error, synthetic_cube, write_netcdf

runner = CliRunner()


@pytest.fixture(scope="module")
def ws(tiny_checkpoint, tmp_path_factory):
    """A workspace: the cube and checkpoint, a finished store, a user folder, odd files."""
    cube, ckpt, ds = tiny_checkpoint
    root = tmp_path_factory.mktemp("hostile")
    store = root / "done.zarr"
    r = runner.invoke(app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(store)])
    assert r.exit_code == 0, r.output
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (root / "text.pt").write_text("not a checkpoint")
    (root / "ckdir").mkdir()
    (root / "a.yaml").write_text("extends: ./b.yaml\n")
    (root / "b.yaml").write_text("extends: ./a.yaml\n")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    inf = ds.copy(deep=True)
    inf["t2m"][3, 2, 2] = float("inf")
    write_netcdf(inf, root / "inf.nc")
    ncdir = root / "ncdir"
    ncdir.mkdir()
    write_netcdf(synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",)), ncdir / "x.nc")
    plain = root / "plain.zarr"
    synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",)).to_zarr(plain)
    return {"cube": cube, "ckpt": ckpt, "store": store, "mine": mine, "root": root}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    for p in sorted(path.rglob("*")) if path.is_dir() else []:
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _train(ws, *sets, out="run", extra=()):
    args = ["train", "--out", str(ws["root"] / out), *extra]
    for s in [*TINY_RUN, f"data.paths=[{ws['cube']}]", "train.epochs=1", *sets]:
        args += ["--set", s]
    return args


def _embed(ws, *extra, out="new.zarr", ckpt=None):
    return ["embed", str(ws["cube"]), "--checkpoint", str(ckpt or ws["ckpt"]),
            "--out", str(ws["root"] / out), *extra]  # fmt: skip


# (id, argv from the workspace, words the one line must contain)
CASES = [
    ("cell-unknown", lambda w: _train(w, "model.cell=lstm"), "model.cell"),
    ("filters-negative", lambda w: _train(w, "model.filters=-3"), "model.filters"),
    ("clusters-negative", lambda w: _train(w, "model.clusters=-3"), "model.clusters"),
    ("kernel-zero", lambda w: _train(w, "model.kernel_size=0"), "model.kernel_size"),
    ("objective-unknown", lambda w: _train(w, "model.objective=guess"), "model.objective"),
    ("cell-option-unknown", lambda w: _train(w, "model.cell_options={colour: red}"), "colour"),
    ("fa-options-on-convlstm", lambda w: _train(w, "model.cell=convlstm",
                                                "model.cell_options={attention_every: 2}"),
     "attention_every"),  # fmt: skip
    ("batch-zero", lambda w: _train(w, "train.batch_size=0"), "train.batch_size"),
    ("batch-negative", lambda w: _train(w, "train.batch_size=-4"), "train.batch_size"),
    ("lr-nan", lambda w: _train(w, "train.lr=.nan"), "train.lr"),
    ("epochs-zero", lambda w: _train(w, "train.epochs=0"), "train.epochs"),
    ("val-fraction", lambda w: _train(w, "data.val_fraction=1.5"), "data.val_fraction"),
    ("edge-unknown", lambda w: _train(w, "tiles.edge=wrap"), "tiles.edge"),
    ("climatology-unknown", lambda w: _train(w, "data.climatology=weekly"), "data.climatology"),
    ("stats-not-stats", lambda w: _train(w, f"data.stats={w['cube']}"), "not a faextract statistics"),
    ("extends-cycle", lambda w: ["train", "--out", str(w["root"] / "run"), "--config",
                                 str(w["root"] / "a.yaml")], "loops back"),  # fmt: skip
    ("config-bad-yaml", lambda w: ["train", "--out", str(w["root"] / "run"), "--config",
                                   str(w["root"] / "bad.yaml")], "not valid YAML"),  # fmt: skip
    ("config-directory", lambda w: ["train", "--out", str(w["root"] / "run"), "--config",
                                    str(w["root"] / "ckdir")], "is a directory"),  # fmt: skip
    ("train-device-tpu", lambda w: _train(w, extra=["--device", "tpu"]), "tpu"),
    ("train-device-junk", lambda w: _train(w, extra=["--device", "cpu:abc"]), "cpu:abc"),
    ("train-out-file", lambda w: _train(w, out="text.pt"), "is a file"),
    ("train-out-user-dir", lambda w: _train(w, out="mine", extra=["--overwrite"]), "not a faextract run"),
    ("train-input-inf", lambda w: _train(w, f"data.paths=[{w['root'] / 'inf.nc'}]"), "infinite"),
    ("embed-batch-zero", lambda w: _embed(w, "--batch-size", "0"), "--batch-size"),
    ("embed-batch-negative", lambda w: _embed(w, "--batch-size", "-3"), "--batch-size"),
    ("embed-keep-zero", lambda w: _embed(w, "--keep", "0"), "--keep"),
    ("embed-warmup-negative", lambda w: _embed(w, "--warmup", "-1"), "--warmup"),
    ("embed-device-tpu", lambda w: _embed(w, "--device", "tpu"), "--device"),
    ("embed-query-off-grid", lambda w: _embed(w, "--attention-query", "gap=0:0.5,1:2"), "no grid cell"),
    ("embed-query-nan", lambda w: _embed(w, "--attention-query", "q=nan:5,1:2"), "finite"),
    ("embed-query-syntax", lambda w: _embed(w, "--attention-query", "q=1:2"), "--attention-query"),
    ("embed-shard", lambda w: _embed(w, "--shard", "3/2"), "--shard"),
    ("embed-zarr-format", lambda w: _embed(w, "--zarr-format", "4"), "--zarr-format"),
    ("embed-perturb", lambda w: _embed(w, "--perturb", "noise=-1"), "--perturb"),
    ("embed-ckpt-text", lambda w: _embed(w, ckpt=w["root"] / "text.pt"), "text.pt"),
    ("embed-ckpt-dir", lambda w: _embed(w, ckpt=w["root"] / "ckdir"), "ckdir"),
    ("embed-out-input", lambda w: ["embed", str(w["cube"]), "--checkpoint", str(w["ckpt"]),
                                   "--out", str(w["cube"]), "--overwrite"], "is an input"),  # fmt: skip
    ("embed-out-user-dir", lambda w: _embed(w, "--overwrite", out="mine"), "not an embeddings store"),
    ("embed-complete", lambda w: _embed(w, out="done.zarr"), "already complete"),
    ("embed-input-inf", lambda w: ["embed", str(w["root"] / "inf.nc"), "--checkpoint",
                                   str(w["ckpt"]), "--out", str(w["root"] / "inf.zarr")], "infinite"),  # fmt: skip
    ("stats-out-input", lambda w: ["stats", str(w["cube"]), "-o", str(w["cube"]), "--overwrite"], "is an input"),
    ("stats-climatology", lambda w: ["stats", str(w["cube"]), "-o", str(w["root"] / "s.nc"),
                                     "--climatology", "weekly"], "weekly"),  # fmt: skip
    ("inspect-missing", lambda w: ["inspect", str(w["root"] / "nope.nc")], "no such file"),
    ("inspect-nc-directory", lambda w: ["inspect", str(w["root"] / "ncdir")], "*.nc"),
    ("export-user-dir", lambda w: ["export", str(w["store"]), str(w["mine"]), "--overwrite"], "not a"),
    ("plot-user-dir", lambda w: ["plot", str(w["store"]), "--out", str(w["mine"])], "not a"),
    ("evaluate-leads", lambda w: ["evaluate", str(w["store"]), "--input", str(w["cube"]),
                                  "--out", str(w["root"] / "ev"), "--leads", "x"], "--leads"),  # fmt: skip
    ("evaluate-index", lambda w: ["evaluate", str(w["store"]), "--input", str(w["cube"]),
                                  "--out", str(w["root"] / "ev"), "--index", "bad"], "--index"),  # fmt: skip
    ("evaluate-not-a-store", lambda w: ["evaluate", str(w["root"] / "plain.zarr"), "--input",
                                        str(w["cube"]), "--out", str(w["root"] / "ev")],
     "not a faextract embeddings store"),  # fmt: skip
    ("slurm-newline", lambda w: ["slurm", "embed", str(w["cube"]), "--checkpoint", str(w["ckpt"]),
                                 "--out", "o.zarr", "--partition", "gpu\nrm -rf ~"], "--partition"),  # fmt: skip
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_harmless(ws, case):
    _, argv, words = case
    before = {k: _digest(ws[k]) for k in ("cube", "ckpt", "store", "mine")}
    listing = sorted(p.name for p in ws["root"].iterdir())
    assert_one_line_error(runner.invoke(app, argv(ws)), words)
    assert {k: _digest(ws[k]) for k in before} == before
    new = sorted(set(p.name for p in ws["root"].iterdir()) - set(listing))
    for name in new:  # anything a failed command left must not look complete
        path = ws["root"] / name
        assert not (path / "last.pt").exists() and not (path / "report.json").exists(), name
        if (path / "zarr.json").exists():
            import json

            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
            assert not attrs.get("complete"), name


def test_a_full_disk_is_one_line(ws, monkeypatch):
    """ENOSPC while writing a store: one line, exit 1, and the store is not marked complete."""
    import faextract.store as store

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(store.EmbeddingStore, "write_block", full)
    out = ws["root"] / "full.zarr"
    result = runner.invoke(app, _embed(ws, out="full.zarr"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "No space left" in result.output
    assert not store.zarr.open_group(str(out)).attrs.get("complete")


def test_a_read_only_output_folder_is_one_line(ws, monkeypatch):
    """EROFS when the statistics are written (a read-only scratch mount)."""
    import xarray as xr

    def read_only(self, path, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(xr.Dataset, "to_netcdf", read_only)
    result = runner.invoke(app, ["stats", str(ws["cube"]), "-o", str(ws["root"] / "ro.nc")])
    assert result.exit_code == 1, result.output
    assert "Read-only file system" in result.output and "Traceback" not in result.output
    assert not (ws["root"] / "ro.nc").exists()


def test_a_checkpoint_with_nan_weights_is_refused(ws):
    import torch

    ckpt = torch.load(ws["ckpt"], weights_only=True)
    name = next(k for k, v in ckpt["model"]["state_dict"].items() if v.is_floating_point())
    ckpt["model"]["state_dict"][name] = ckpt["model"]["state_dict"][name] * float("nan")
    bad = ws["root"] / "nan.pt"
    torch.save(ckpt, bad)
    result = runner.invoke(app, _embed(ws, out="nan.zarr", ckpt=bad))
    assert result.exit_code == 2 and "NaN or infinite" in result.output
    assert not (ws["root"] / "nan.zarr").exists()


def test_a_missing_time_value_is_refused(tmp_path):
    import netCDF4

    path = tmp_path / "nan-time.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", 3)
        nc.createDimension("lat", 4)
        nc.createDimension("lon", 8)
        t = nc.createVariable("time", "f8", ("time",), fill_value=-9999.0)
        t.units, t.calendar = "days since 2000-01-01", "noleap"
        t[:] = [0.0, -9999.0, 2.0]
        la = nc.createVariable("lat", "f8", ("lat",))
        la.units = "degrees_north"
        la[:] = [60, 20, -20, -60]
        lo = nc.createVariable("lon", "f8", ("lon",))
        lo.units = "degrees_east"
        lo[:] = np.arange(8) * 45.0
        nc.createVariable("t2m", "f4", ("time", "lat", "lon"))[:] = np.ones((3, 4, 8))
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nan-time.nc" in result.output and "missing" in result.output


def test_a_grid_too_large_for_memory_is_one_line(ws, monkeypatch):
    """A grid declared 20000 x 40000 fails to allocate: one line, exit 1, no traceback."""
    import faextract.data.cube as cube_mod

    def too_big(self, t0, t1):
        raise MemoryError

    monkeypatch.setattr(cube_mod.Cube, "read", too_big)
    result = runner.invoke(app, _embed(ws, out="big.zarr"))
    line = assert_one_line_error(result, "out of memory", exit_code=1)
    assert "tiles" in line
