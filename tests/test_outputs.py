"""Data safety: --overwrite replaces only what faextract made, and never an input.

Each reproduction of a data loss found in a fault sweep is its own test here: the user's files
and the inputs are bitwise unchanged afterwards, and the refusal is one line, exit 2.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from typer.testing import CliRunner

from faextract.cli import app
from faextract.testing import assert_one_line_error, synthetic_cube

runner = CliRunner()


def _digest(path) -> str:
    """sha256 over every file under ``path`` (names and bytes)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        h.update(open(path, "rb").read())
        return h.hexdigest()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            h.update(open(full, "rb").read())
    return h.hexdigest()


@pytest.fixture
def user_dir(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious\n")
    return d


def _embed(cube, ckpt, out, *extra):
    return runner.invoke(
        app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(out), *extra]
    )


def test_embed_overwrite_refuses_a_user_directory(tiny_checkpoint, user_dir):
    cube, ckpt, _ = tiny_checkpoint
    before = _digest(user_dir)
    assert_one_line_error(_embed(cube, ckpt, user_dir, "--overwrite"), str(user_dir), "not an embeddings store")
    assert _digest(user_dir) == before


def test_embed_refuses_its_own_zarr_input_as_output(tiny_checkpoint, tmp_path):
    cube, ckpt, ds = tiny_checkpoint
    src = tmp_path / "in.zarr"
    ds.to_zarr(src)
    before = _digest(src)
    assert_one_line_error(_embed(src, ckpt, src, "--overwrite"), "is an input")
    assert_one_line_error(_embed(src, ckpt, src / "out.zarr"), "inside the input")
    assert _digest(src) == before
    assert_one_line_error(_embed(cube, ckpt, cube.parent, "--overwrite"), "contains the input")


def test_embed_refuses_the_checkpoint_as_output(tiny_checkpoint):
    cube, ckpt, _ = tiny_checkpoint
    before = _digest(ckpt)
    assert_one_line_error(_embed(cube, ckpt, ckpt, "--overwrite"), "is an input")
    assert _digest(ckpt) == before


def test_embed_overwrite_replaces_its_own_store(tiny_checkpoint, tmp_path):
    cube, ckpt, _ = tiny_checkpoint
    out = tmp_path / "e.zarr"
    assert _embed(cube, ckpt, out).exit_code == 0
    assert_one_line_error(_embed(cube, ckpt, out), "already complete")
    assert _embed(cube, ckpt, out, "--overwrite").exit_code == 0
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert _embed(cube, ckpt, empty).exit_code == 0  # an empty directory holds nothing to lose


def test_embed_refuses_a_symlink_output(tiny_checkpoint, tmp_path):
    cube, ckpt, _ = tiny_checkpoint
    real = tmp_path / "real.zarr"
    assert _embed(cube, ckpt, real).exit_code == 0
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    before = _digest(real)
    assert_one_line_error(_embed(cube, ckpt, link, "--overwrite"), "symbolic link")
    assert _digest(real) == before


def test_stats_never_replaces_an_input_or_a_user_directory(tmp_path, user_dir, small_nc):
    before = _digest(small_nc)
    r = runner.invoke(app, ["stats", str(small_nc), "-o", str(small_nc), "--overwrite"])
    assert_one_line_error(r, "is an input")
    assert _digest(small_nc) == before
    dir_before = _digest(user_dir)
    r = runner.invoke(app, ["stats", str(small_nc), "-o", str(user_dir), "--overwrite"])
    assert_one_line_error(r, "not a statistics file")
    assert _digest(user_dir) == dir_before
    # A plain file the user owns is not ours either.
    other = tmp_path / "other.nc"
    shutil.copy(small_nc, other)
    r = runner.invoke(app, ["stats", str(small_nc), "-o", str(other), "--overwrite"])
    assert_one_line_error(r, "not a statistics file")
    # Our own statistics are replaced on request.
    out = tmp_path / "stats.nc"
    assert runner.invoke(app, ["stats", str(small_nc), "-o", str(out)]).exit_code == 0
    assert_one_line_error(runner.invoke(app, ["stats", str(small_nc), "-o", str(out)]), "--overwrite")
    r = runner.invoke(app, ["stats", str(small_nc), "-o", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output


def test_export_onto_a_directory_or_a_foreign_file_isassert_one_line_error(tiny_checkpoint, tmp_path, user_dir):
    cube, ckpt, _ = tiny_checkpoint
    store = tmp_path / "e.zarr"
    assert _embed(cube, ckpt, store).exit_code == 0
    before = _digest(user_dir)
    assert_one_line_error(runner.invoke(app, ["export", str(store), str(user_dir), "--overwrite"]), "not a")
    assert _digest(user_dir) == before
    assert_one_line_error(runner.invoke(app, ["export", str(store), str(cube), "--overwrite"]), "not a")
    assert_one_line_error(runner.invoke(app, ["export", str(store), str(store / "x.nc")]), "inside the input")
    out = tmp_path / "e.nc"
    assert runner.invoke(app, ["export", str(store), str(out)]).exit_code == 0
    assert runner.invoke(app, ["export", str(store), str(out), "--overwrite"]).exit_code == 0
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]


def test_plot_never_mixes_or_silently_replaces_figures(tiny_checkpoint, tmp_path, user_dir):
    pytest.importorskip("matplotlib")
    cube, ckpt, _ = tiny_checkpoint
    store = tmp_path / "e.zarr"
    assert _embed(cube, ckpt, store).exit_code == 0
    before = _digest(user_dir)
    assert_one_line_error(runner.invoke(app, ["plot", str(store), "--out", str(user_dir)]), "not a")
    assert _digest(user_dir) == before
    out = tmp_path / "look"
    assert runner.invoke(app, ["plot", str(store), "--out", str(out)]).exit_code == 0
    stale = out / "attention_query_old_head0.png"
    stale.write_bytes(b"from another store")
    # A figure name the manifest lists is ours; an extra file the user put there is kept.
    import json

    manifest = json.loads((out / ".faextract-plot.json").read_text())
    manifest["figures"].append(stale.name)
    (out / ".faextract-plot.json").write_text(json.dumps(manifest))
    (out / "mine.txt").write_text("keep me")
    assert_one_line_error(runner.invoke(app, ["plot", str(store), "--out", str(out)]), "--overwrite")
    r = runner.invoke(app, ["plot", str(store), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not stale.exists() and (out / "mine.txt").read_text() == "keep me"


def test_train_out_must_be_a_run_directory(tmp_path, user_dir, tiny_config, small_nc):
    from faextract.errors import FaextractError
    from faextract.train import train

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FaextractError, match="is a file"):
        train(tiny_config("train.epochs=1"), afile)
    before = _digest(user_dir)
    with pytest.raises(FaextractError, match="not a faextract run"):
        train(tiny_config("train.epochs=1"), user_dir, overwrite=True)
    assert _digest(user_dir) == before
    with pytest.raises(FaextractError, match="contains the input"):
        train(tiny_config("train.epochs=1"), small_nc.parent, overwrite=True)


def test_a_path_that_exists_is_not_a_glob(tmp_path):
    from faextract.data.sources import resolve_paths
    from faextract.testing import write_netcdf

    ds = synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",))
    literal = tmp_path / "data[1].nc"
    decoy = tmp_path / "data1.nc"
    write_netcdf(ds, literal)
    write_netcdf(ds, decoy)
    assert resolve_paths([str(literal)]) == [str(literal)]
    assert resolve_paths([str(tmp_path / "data[12].nc")]) == [str(decoy)]


def test_a_lock_with_wait_takes_over_once_its_holder_lets_go(tmp_path):
    """``Lock(wait=...)`` waits for a live holder instead of refusing at once, and still
    refuses, naming the holder, when the holder keeps it past the wait."""
    import threading

    from faextract.errors import FaextractError
    from faextract.runtime.locks import Lock

    path = tmp_path / "x.lock"
    first = Lock(path, "the store x")
    first.acquire()
    with pytest.raises(FaextractError, match="in use by process"):
        Lock(path, "the store x", wait=0.3).acquire()
    threading.Timer(0.3, first.release).start()
    second = Lock(path, "the store x", wait=10.0)
    second.acquire()
    assert second.held
    second.release()
    assert not path.exists()
