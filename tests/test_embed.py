"""embed: the store's content and metadata, restart after a kill, shards, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from faextract.cli import app
from faextract.config import load_config
from faextract.data import open_cube
from faextract.embed import EmbedOptions, embed
from faextract.errors import FaextractError
from faextract.store import open_embeddings, to_netcdf
from faextract.testing import TINY_RUN, synthetic_cube, write_netcdf
from faextract.train import train

runner = CliRunner()
ARRAYS = ["embedding", "attention_received", "attention_distance", "attention_query_nino", "latent"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    ds = synthetic_cube(nt=50, nlat=12, nlon=24, variables=("sst", "t2m"), seed=2)
    cube = root / "cube.nc"
    write_netcdf(ds, cube)
    cfg = load_config(
        None,
        [f"data.paths=[{cube}]", *TINY_RUN, "train.epochs=1"],
    )
    train(cfg, root / "run", plain_progress=True)
    return cube, root / "run" / "last.pt", ds


def _opts(**kw):
    base = dict(queries={"nino": (-10.0, 10.0, 190.0, 270.0)}, latent=True, block=8)
    base.update(kw)
    return EmbedOptions(**base)


def _arrays(path):
    ds = open_embeddings(path)
    return {k: ds[k].values for k in ARRAYS if k in ds}


def test_store_content_and_metadata(tmp_path, trained):
    cube, ckpt, src = trained
    out = tmp_path / "emb.zarr"
    result = embed([cube], ckpt, str(out), _opts(), command="faextract embed test")
    assert result.status == "complete"
    ds = open_embeddings(out)
    assert ds["embedding"].dims == ("time", "component") and ds["embedding"].shape == (50, 8)
    assert np.isfinite(ds["embedding"].values).all()
    assert (
        ds["latent"].dims == ("time", "channel", "lat", "lon")
        and np.isfinite(ds["latent"].values).all()
    )
    assert ds.sizes["attention_time"] == 25  # attention every 2 steps
    rec = ds["attention_received"].values
    assert np.isfinite(rec).all()
    assert rec.mean() == pytest.approx(1.0, rel=0.05)
    dist = ds["attention_distance"].values
    assert (dist > 0).all() and dist.max() < 20_000  # km, less than half the circumference
    assert np.isfinite(ds["attention_query_nino"].values).all()
    # time keeps the input calendar; CF attributes are there
    assert ds["time"].values[0].calendar == "noleap"
    assert (
        ds.attrs["Conventions"].startswith("CF-") and "faextract embed test" in ds.attrs["history"]
    )
    assert "sha256" in ds.attrs["source"] and "2601.10914" in ds.attrs["references"]
    for name in ARRAYS:
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs
    assert ds["lat"].attrs["units"] == "degrees_north"


def test_zarr_format_2(tmp_path, trained):
    cube, ckpt, _ = trained
    out = tmp_path / "v2.zarr"
    embed([cube], ckpt, str(out), _opts(zarr_format=2, latent=False))
    assert (out / ".zgroup").exists()
    assert open_embeddings(out)["embedding"].shape == (50, 8)


def test_restart_after_a_kill_is_bitwise_identical(tmp_path, trained, monkeypatch):
    cube, ckpt, _ = trained
    ref = tmp_path / "ref.zarr"
    embed([cube], ckpt, str(ref), _opts())
    out = tmp_path / "killed.zarr"
    import faextract.store as store_mod

    real = store_mod.EmbeddingStore.write_block
    count = {"n": 0}

    def dying(self, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt  # the process dies while writing the third block
        return real(self, *a, **k)

    monkeypatch.setattr(store_mod.EmbeddingStore, "write_block", dying)
    with pytest.raises(KeyboardInterrupt):
        embed([cube], ckpt, str(out), _opts())
    with pytest.raises(FaextractError, match="incomplete store"):
        open_embeddings(out)
    monkeypatch.setattr(store_mod.EmbeddingStore, "write_block", real)
    result = embed([cube], ckpt, str(out), _opts())
    assert result.status == "complete" and result.blocks_written == result.blocks_total - 2
    a, b = _arrays(ref), _arrays(out)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_shards_into_one_store_equal_one_process(tmp_path, trained):
    cube, ckpt, _ = trained
    ref = tmp_path / "ref.zarr"
    embed([cube], ckpt, str(ref), _opts())
    out = tmp_path / "sharded.zarr"
    statuses = [embed([cube], ckpt, str(out), _opts(shard=(i, 3))).status for i in (2, 0, 1)]
    assert statuses == ["partial", "partial", "complete"]
    a, b = _arrays(ref), _arrays(out)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k
    # a task of the array that starts after the store is complete has nothing to do: success
    late = embed([cube], ckpt, str(out), _opts(shard=(1, 3)))
    assert late.status == "complete" and late.blocks_written == 0
    assert all(np.array_equal(v, _arrays(out)[k], equal_nan=True) for k, v in b.items())


def test_spatial_tiles_with_halo(tmp_path, trained):
    cube, ckpt, _ = trained
    out = tmp_path / "tiled.zarr"
    embed([cube], ckpt, str(out), _opts(tile=(8, 12), halo=2))
    ds = open_embeddings(out)
    assert ds["embedding"].dims == ("time", "tile_y", "tile_x", "component")
    assert np.isfinite(ds["attention_received"].values).all()
    assert np.isfinite(ds["latent"].values).all()


def test_refusals(tmp_path, trained):
    cube, ckpt, src = trained
    out = tmp_path / "e.zarr"
    embed([cube], ckpt, str(out), _opts(latent=False))
    with pytest.raises(FaextractError, match="already complete"):
        embed([cube], ckpt, str(out), _opts(latent=False))
    other = tmp_path / "other.nc"
    write_netcdf(src.isel(time=slice(0, 30)), other)
    with pytest.raises(FaextractError, match="another checkpoint or input"):
        embed([other], ckpt, str(out), _opts(latent=False))
    embed([other], ckpt, str(out), _opts(latent=False, overwrite=True))
    assert open_embeddings(out).sizes["time"] == 30


def test_embed_a_remote_store(tmp_path, trained):
    """A Zarr store behind a URL (memory:// stands in for gs:// or s3://) embeds like the file."""
    cube, ckpt, src = trained
    url = "memory://faextract-embed/cube.zarr"
    src.to_zarr(url, mode="w")
    embed([url], ckpt, str(tmp_path / "remote.zarr"), _opts(latent=False))
    embed([cube], ckpt, str(tmp_path / "local.zarr"), _opts(latent=False))
    remote, local = (
        open_embeddings(tmp_path / "remote.zarr"),
        open_embeddings(tmp_path / "local.zarr"),
    )
    np.testing.assert_allclose(remote["embedding"].values, local["embedding"].values, atol=1e-5)
    assert url in remote.attrs["comment"] or "cube.zarr" in remote.attrs["comment"]


def test_bad_checkpoint_files_are_one_line_errors(tmp_path, trained):
    import torch

    from faextract.checkpoint import load_checkpoint

    _, ckpt, _ = trained
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:2000])
    torch.save({"layer": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    cases = {
        "text.pt": "not a PyTorch checkpoint",
        "cut.pt": "not a readable checkpoint .*zip archive",
        "module.pt": "not a faextract checkpoint .*Python objects",
        ".": "a directory, not a checkpoint file",
    }
    for name, message in cases.items():
        with pytest.raises(FaextractError, match=message) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)


def test_mismatches_are_named(tmp_path, trained):
    cube, ckpt, src = trained
    cases = [
        (src[["sst"]], "needs variable 't2m'"),
        (synthetic_cube(nt=20, nlat=6, nlon=12, variables=("sst", "t2m")), "resolution"),
        (
            synthetic_cube(nt=20, nlat=12, nlon=24, variables=("sst", "t2m"), calendar="360_day"),
            "calendar",
        ),
    ]
    for i, (ds, message) in enumerate(cases):
        path = tmp_path / f"m{i}.nc"
        write_netcdf(ds, path)
        with pytest.raises(FaextractError, match=message):
            embed([path], ckpt, str(tmp_path / f"m{i}.zarr"), _opts())
        assert not (tmp_path / f"m{i}.zarr").exists(), "nothing is written on bad input"


def test_inputs_are_not_modified(tmp_path, trained):
    cube, ckpt, _ = trained
    before = (cube.read_bytes(), ckpt.read_bytes())
    embed([cube], ckpt, str(tmp_path / "x.zarr"), _opts())
    assert (cube.read_bytes(), ckpt.read_bytes()) == before


@pytest.mark.slow
def test_cf_compliance(tmp_path, trained):
    checker = pytest.importorskip("compliance_checker.runner")
    cube, ckpt, _ = trained
    out = tmp_path / "cf.zarr"
    embed([cube], ckpt, str(out), _opts())
    nc = tmp_path / "cf.nc"
    to_netcdf(out, nc)  # xr.open_zarr(out).to_netcdf(nc) with CF-correct encodings
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_path / "report.json"
    ok, errors = ComplianceChecker.run_checker(
        str(nc),
        ["cf:1.8"],
        verbose=0,
        criteria="normal",
        output_filename=str(report),
        output_format="json",
    )
    import json

    data = json.loads(report.read_text())
    scored = data["cf:1.8"]
    high = [m for item in scored.get("high_priorities", []) for m in item.get("msgs", [])]
    assert not high, high
    del checker, ok, errors


def test_cli_export_to_netcdf(tmp_path, trained):
    cube, ckpt, _ = trained
    out = tmp_path / "x.zarr"
    embed([cube], ckpt, str(out), _opts(latent=False))
    nc = tmp_path / "x.nc"
    result = runner.invoke(app, ["export", str(out), str(nc)])
    assert result.exit_code == 0, result.output
    back = xr.open_dataset(nc)
    np.testing.assert_array_equal(
        back["embedding"].values, open_embeddings(out)["embedding"].values
    )
    assert "_FillValue" not in back["lat"].encoding or back["lat"].encoding["_FillValue"] is None
    assert runner.invoke(app, ["export", str(out), str(nc)]).exit_code == 2


def test_cli_embed(tmp_path, trained):
    cube, ckpt, _ = trained
    out = tmp_path / "cli.zarr"
    args = [
        "embed",
        str(cube),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--attention-query",
        "box=0:30,0:60",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "complete" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already complete" in again.output
    bad = runner.invoke(
        app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(out), "--shard", "3/2"]
    )
    assert bad.exit_code == 2 and "--shard" in bad.output
    assert "attention_query_box" in open_embeddings(out)


def test_a_reading_bound_run_suggests_workers(tmp_path, trained, monkeypatch):
    """The time the model waits for input is measured; when reading set the pace of a long
    run, the command says so and what to do."""
    import faextract.embed as embed_module
    from faextract.embed import EmbedResult

    cube, ckpt, _ = trained
    result = embed([cube], ckpt, str(tmp_path / "e.zarr"), _opts(latent=False))
    assert 0.0 < result.input_wait < result.seconds
    slow = EmbedResult(str(tmp_path / "x.zarr"), "complete", 4, 4, 100, 120.0, 1, input_wait=90.0)
    assert (
        slow.reading_bound()
        and not EmbedResult("x", "complete", 1, 1, 8, 5.0, 1, 4.0).reading_bound()
    )
    monkeypatch.setattr(embed_module, "embed", lambda *a, **k: slow)
    out = runner.invoke(app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", "x.zarr"])
    assert out.exit_code == 0 and "waited for input 75% of the time; --workers 2-4" in out.output
    quiet = runner.invoke(
        app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", "x.zarr", "--workers", "2"]
    )
    assert "waited for input" not in quiet.output


def test_stop_file_stops_cleanly_and_rerun_finishes(tmp_path, trained, monkeypatch):
    cube, ckpt, _ = trained
    stop = tmp_path / "STOP"
    stop.touch()
    monkeypatch.setenv("FAEXTRACT_STOP_FILE", str(stop))
    out = tmp_path / "stopped.zarr"
    result = runner.invoke(app, ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(out)])
    assert result.exit_code == 75 and "rerun the same command" in result.output
    stop.unlink()
    with pytest.raises(
        FaextractError, match=r"was started with block=\d+, now 12; rerun with the same options"
    ):
        embed([cube], ckpt, str(out), _opts())
    # Another batch size would batch the windows differently (not bitwise the same): refused.
    with pytest.raises(FaextractError, match="batch_size=8, now 3"):
        embed([cube], ckpt, str(out), EmbedOptions(batch_size=3))
    # The CLI's defaults: the resume takes the block size from the store.
    done = embed([cube], ckpt, str(out), EmbedOptions())
    assert done.status == "complete"


def test_plot_writes_pngs(tmp_path, trained):
    pytest.importorskip("matplotlib")
    cube, ckpt, _ = trained
    out = tmp_path / "p.zarr"
    embed([cube], ckpt, str(out), _opts(latent=False))
    result = runner.invoke(app, ["plot", str(out), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert "embedding_pcs.png" in names and "attention_received_head0.png" in names
    assert "attention_query_nino_head1.png" in names


def _great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Haversine distance, the reference the factored form in AttentionMaps must equal."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


@pytest.mark.parametrize("block,keep", [(1, 0), (1 << 22, 0), (1, 1 << 24)])
def test_attention_maps_equal_the_explicit_effective_attention(block, keep):
    """The maps are contractions of E[q, k] = col[x](y, y') row[y'](x, x'), computed without
    forming E: compare with E built explicitly, on a grid with a padded row, in one distance
    block, in one query row per block, and from the distance table kept across calls."""
    import torch

    from faextract.embed import AttentionMaps

    torch.manual_seed(0)
    h, w, n = 5, 7, 3
    lat = np.linspace(-60, 60, h)
    lat[0] = np.nan  # a padded latent row
    lon = np.linspace(0, 300, w)
    in_lat, in_lon = np.repeat(lat, 2), np.repeat(lon, 2)
    maps = AttentionMaps(lat, lon, {"box": (-70.0, 0.0, 0.0, 130.0)}, in_lat, in_lon)
    maps.BLOCK, maps.KEEP = block, keep
    row = torch.rand(n, h, w, w).softmax(-1)
    col = torch.rand(n, w, h, h).softmax(-1)
    out = maps(row, col)
    assert set(out) == {
        "attention_received", "attention_distance", "attention_query_box", "attention_from_box",
    }  # fmt: skip
    again = maps(row, col)["attention_distance"]  # a kept table is reused, not rebuilt
    assert torch.equal(again, out["attention_distance"])
    assert (maps._kept is not None) == bool(keep)

    e = torch.einsum("nxyk,nkxl->nyxkl", col, row).reshape(n, h * w, h * w).double()
    la, lo = np.repeat(lat, w), np.tile(lon, h)
    dist = torch.from_numpy(
        np.nan_to_num(_great_circle_km(la[:, None], lo[:, None], la[None], lo[None]))
    )
    cells = [q for q in range(h * w) if -70 <= la[q] <= 0 and 0 <= lo[q] <= 130]
    want = {
        "attention_received": e.sum(dim=1),
        "attention_distance": (e * dist).sum(dim=-1),
        "attention_query_box": e[:, cells].mean(dim=1) * (h * w),
        "attention_from_box": e[:, :, cells].sum(dim=2) * (h * w) / len(cells),
    }
    for key, value in want.items():
        torch.testing.assert_close(
            out[key].double(), value.view(n, h, w), rtol=1e-5, atol=1e-2, msg=key
        )
    assert out["attention_received"].mean().item() == pytest.approx(1.0, rel=1e-5)
    assert out["attention_distance"].max().item() > 1000.0  # km, not radians or degrees


def test_latent_cell_centres_survive_padding_and_the_dateline():
    from faextract.embed.attention_maps import _latent_geo

    lat = np.array([10.0, 20.0, 30.0, 40.0])
    lon = np.array([350.0, 355.0, 0.0, 5.0])  # crosses the dateline
    # a regional tile whose halo hangs over the west edge: padding first (-1)
    idx_lat = np.array([-1, -1, 0, 1, 2, 3])
    idx_lon = np.array([-1, -1, 0, 1, 2, 3])
    lat_c, lon_c = _latent_geo(idx_lat, idx_lon, lat, lon, 2)
    assert np.isnan(lat_c[0]) and np.isnan(lon_c[0])
    np.testing.assert_allclose(lat_c[1:], [15.0, 35.0])
    np.testing.assert_allclose(np.mod(lon_c[1:], 360.0), [352.5, 2.5])


@pytest.mark.parametrize(
    ("keep", "tiles", "batch"), [(12, 1, 8), (12, 6, 8), (16, 3, 8), (4, 1, 1), (30, 1, 16)]
)
def test_default_block_holds_whole_batches(keep, tiles, batch):
    from faextract.embed.plan import _default_block

    block = _default_block(keep, tiles, batch)
    assert block % keep == 0 and block >= keep
    assert (block // keep * tiles) % batch == 0
    assert block <= max(2 * 64, keep * batch)  # near 64 steps, not arbitrarily long


def test_a_failed_write_raises_instead_of_hanging(tmp_path, trained, monkeypatch):
    """The writer thread dies on its first write while the main thread has filled the queue:
    embed must raise that error (it used to block forever on the full queue)."""
    import threading
    import time

    import faextract.store as store_mod

    cube, ckpt, _ = trained

    def failing(self, *a, **k):
        time.sleep(0.5)  # let the main thread fill the queue meanwhile
        raise OSError("No space left on device")

    monkeypatch.setattr(store_mod.EmbeddingStore, "write_block", failing)
    outcome = {}

    def run():
        try:
            embed([cube], ckpt, str(tmp_path / "full.zarr"), _opts(block=4))
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "embed hung after a failed write"
    assert isinstance(outcome.get("error"), OSError)


def test_embed_opens_files_as_training_did(tmp_path):
    """A model trained with data.dims (axes that cannot be detected), data.sort_time and
    data.select (one ensemble member) embeds the same files without repeating those options;
    --dims and --select still override."""
    ds = synthetic_cube(nt=24, nlat=6, nlon=12, variables=("sst", "t2m"), seed=3)
    ds = xr.concat([ds, ds * 1.1], dim="member", data_vars="all").assign_coords(member=[1, 2])
    ds = ds.rename({"lat": "YY", "lon": "XAX"})
    for name in ("YY", "XAX"):
        ds[name].attrs = {"units": "degrees_north"}  # wrong units: two latitude candidates
    path = tmp_path / "odd.nc"
    write_netcdf(ds.isel(time=[1, 0, *range(2, 24)]), path)  # unsorted times
    with pytest.raises(FaextractError, match="ambiguous lat axis"):
        open_cube(path)
    cfg = load_config(
        None,
        [
            f"data.paths=[{path}]",
            "data.dims={lat: YY, lon: XAX}",
            "data.sort_time=true",
            "data.select={member: 2}",
            "model.filters=8",
            "model.layers=1",
            "model.stem_channels=8",
            "model.embedding_dim=8",
            "model.downsample=1",
            "model.cell_options={attention_dim: 4, temporal_heads: 2}",
            "tiles.window=6",
            "train.epochs=1",
            "train.batch_size=4",
        ],
    )
    train(cfg, tmp_path / "run", plain_progress=True)
    ckpt = tmp_path / "run" / "last.pt"
    result = embed([path], ckpt, str(tmp_path / "odd.zarr"), EmbedOptions())
    assert result.status == "complete"
    emb = open_embeddings(tmp_path / "odd.zarr")
    t = emb["time"].values  # cftime (noleap): sorted as in training
    assert t.size == 24 and all(a < b for a, b in zip(t[:-1], t[1:], strict=True))
    assert emb.attrs["comment"].endswith("; member=2")
    with pytest.raises(FaextractError, match="another checkpoint or input"):  # not mixed in
        embed([path], ckpt, str(tmp_path / "odd.zarr"), EmbedOptions(select="member=1"))
    result = embed([path], ckpt, str(tmp_path / "m1.zarr"), EmbedOptions(select="member=1"))
    other = open_embeddings(tmp_path / "m1.zarr")
    assert not np.allclose(other["embedding"].values, emb["embedding"].values)
    with pytest.raises(FaextractError, match="--select member=3: no such value; member has 1, 2"):
        embed([path], ckpt, str(tmp_path / "bad.zarr"), EmbedOptions(select="member=3"))
    with pytest.raises(FaextractError, match="lon and lat both name dimension 'XAX'"):
        embed([path], ckpt, str(tmp_path / "bad.zarr"), EmbedOptions(dims="lon=XAX,lat=XAX"))
    with pytest.raises(FaextractError, match="no such dimension|'ZZ'"):
        embed([path], ckpt, str(tmp_path / "bad.zarr"), EmbedOptions(dims="lat=ZZ,lon=XAX"))


@pytest.mark.slow
def test_worker_processes_give_the_same_store(tmp_path, trained):
    """--workers 2 (DataLoader processes reading ahead) writes exactly what the thread does."""
    cube, ckpt, _ = trained
    embed([cube], ckpt, str(tmp_path / "thread.zarr"), _opts())
    embed([cube], ckpt, str(tmp_path / "procs.zarr"), _opts(workers=2))
    a, b = _arrays(tmp_path / "thread.zarr"), _arrays(tmp_path / "procs.zarr")
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


@pytest.mark.slow
def test_an_input_error_in_a_worker_is_one_line(tmp_path, trained):
    cube, ckpt, ds = trained
    bad = ds.copy(deep=True)
    bad["t2m"][30, 2, 3] = np.inf
    path = tmp_path / "inf.nc"
    write_netcdf(bad, path)
    with pytest.raises(FaextractError, match=r"variable 't2m' has infinite values") as info:
        embed([path], ckpt, str(tmp_path / "inf.zarr"), _opts(workers=1))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_a_resume_that_would_break_bitwise_identity_is_refused(tmp_path, trained):
    """Another batch layout, another compute path, or an input changed in place since the store
    was started: finishing the store would mix results, so it is refused by name."""
    import json
    import os
    import shutil

    cube, ckpt, _ = trained
    local = tmp_path / "in.nc"
    shutil.copy(cube, local)
    out = tmp_path / "e.zarr"
    assert embed([local], ckpt, str(out), _opts(shard=(0, 2))).status == "partial"
    layout = json.loads(open_embeddings(out, allow_incomplete=True).attrs["faextract_layout"])
    assert layout["batch_size"] == 8 and layout["compute"].startswith("cpu")
    with pytest.raises(FaextractError, match="batch_size=8, now 4"):
        embed([local], ckpt, str(out), _opts(shard=(1, 2), batch_size=4))
    st = os.stat(local)
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(FaextractError, match="changed since this store was started"):
        embed([local], ckpt, str(out), _opts(shard=(1, 2)))
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert embed([local], ckpt, str(out), _opts(shard=(1, 2))).status == "complete"


def test_two_processes_on_one_shard_are_refused(tmp_path, trained):
    """A second embed of the same shard of a store, while the first runs, is refused by name;
    a lock left by a process that died is taken over."""
    import json
    import os
    import socket

    cube, ckpt, _ = trained
    out = tmp_path / "e.zarr"
    embed([cube], ckpt, str(out), _opts(shard=(0, 2)))
    lock = out / ".faextract-lock-1-of-2"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "since": "x"}))
    with pytest.raises(FaextractError, match=r"shard 1/2 of .* is in use by process"):
        embed([cube], ckpt, str(out), _opts(shard=(1, 2)))
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))  # dead
    assert embed([cube], ckpt, str(out), _opts(shard=(1, 2))).status == "complete"
    assert not lock.exists()


def test_a_template_left_by_a_killed_process_is_cleaned(tmp_path, trained):
    import socket

    cube, ckpt, _ = trained
    out = tmp_path / "e.zarr"
    dead = tmp_path / f"e.zarr.tmp-{socket.gethostname()}-{2**22 + 99}-abcd1234"
    dead.mkdir()
    (dead / "zarr.json").write_text("{}")
    embed([cube], ckpt, str(out), _opts(latent=False))
    assert not dead.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_signal_while_starting_stops_cleanly(tmp_path, trained, monkeypatch):
    """SIGTERM before the first block (while the model loads) exits 75, not -15, leaving a
    store that the same command finishes."""
    import os
    import signal

    import faextract.embed.run as emb

    cube, ckpt, _ = trained
    real = emb.pick_device

    def slow_start(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(emb, "pick_device", slow_start)
    out = tmp_path / "e.zarr"
    args = ["embed", str(cube), "--checkpoint", str(ckpt), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 75, result.output
    monkeypatch.setattr(emb, "pick_device", real)
    assert runner.invoke(app, args).exit_code == 0
    assert open_embeddings(out).attrs["complete"]


def test_plot_ticks_fall_on_month_starts():
    import datetime

    import cftime

    from faextract.plot import calendar_ticks

    daily = np.array([cftime.Datetime360Day(2000, 1, 1) + datetime.timedelta(days=i) for i in range(720)])
    ticks, labels = calendar_ticks(daily)
    assert all(daily[i].day == 1 for i in ticks) and len(ticks) <= 10
    assert labels[0] == "2000-01" and labels[1] == "2000-04"
    monthly = np.array([cftime.DatetimeNoLeap(1990 + i // 12, i % 12 + 1, 15) for i in range(240)])
    ticks, labels = calendar_ticks(monthly)
    assert labels[:2] == ["1990", "1992"] and len(ticks) <= 10
