"""Classic climatology files: every date in year 0 (``hour since 0000-01-01``, standard
calendar), 12 mid-month steps, ``missing_value`` fills. They go through inspect, stats, train,
embed and export, and the outputs keep the input's time numbers, units and calendar."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
from typer.testing import CliRunner

from faextract.cli import app
from faextract.testing import TINY_RUN

runner = CliRunner()
MID_MONTH_DAYS = [15, 45, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349]


def write_year_zero_climatology(path, nlat=12, nlon=24):
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("TIME", 12)
        nc.createDimension("LAT", nlat)
        nc.createDimension("LON", nlon)
        t = nc.createVariable("TIME", "f8", ("TIME",))
        t.units, t.calendar, t.axis = "hour since 0000-01-01 00:00:00", "standard", "T"
        t[:] = np.array(MID_MONTH_DAYS, float) * 24
        lat = nc.createVariable("LAT", "f8", ("LAT",))
        lat.units = "degrees_north"
        lat[:] = np.linspace(-82.5, 82.5, nlat)
        lon = nc.createVariable("LON", "f8", ("LON",))
        lon.units = "degrees_east"
        lon[:] = np.arange(nlon) * 360.0 / nlon + 7.5
        season = np.sin(2 * np.pi * np.arange(12) / 12)[:, None, None]
        base = 15 + 10 * np.cos(np.deg2rad(lat[:]))[None, :, None] + season * np.sign(lat[:])[None, :, None]
        for name, offset in (("SST", 0.0), ("AIRT", 2.0)):
            v = nc.createVariable(name, "f4", ("TIME", "LAT", "LON"), fill_value=np.float32(-1e34))
            v.missing_value, v.units = np.float32(-1e34), "degC"
            data = base + offset + 0.3 * rng.standard_normal((12, nlat, nlon))
            if name == "SST":
                data[:, :2, :] = -1e34  # ice-covered rows: missing everywhere in time
            v[:] = data
    return path


@pytest.fixture
def clim(tmp_path):
    return write_year_zero_climatology(tmp_path / "clim.nc")


def _ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def test_year_zero_climatology_end_to_end(tmp_path, clim):
    out = _ok(runner.invoke(app, ["inspect", str(clim)])).output
    assert "0000-01-16" in out.replace("\n", "")
    _ok(runner.invoke(app, ["stats", str(clim), "-o", str(tmp_path / "st.nc"), "--climatology", "monthly"]))
    run = tmp_path / "run"
    sets = [*TINY_RUN, f"data.paths=[{clim}]", "tiles.window=4", "tiles.stride=1",
            "train.epochs=1", "data.val_fraction=0.2"]  # fmt: skip
    args = ["train", "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    _ok(runner.invoke(app, args))
    store = tmp_path / "e.zarr"
    _ok(runner.invoke(app, ["embed", str(clim), "--checkpoint", str(run / "last.pt"),
                            "--out", str(store)]))  # fmt: skip
    from faextract.store import open_embeddings

    ds = open_embeddings(store)
    assert ds.time.values[0].year == 0 and ds.time.values[0].month == 1
    assert ds.time.encoding["units"] == "hour since 0000-01-01 00:00:00"
    exported = tmp_path / "e.nc"
    _ok(runner.invoke(app, ["export", str(store), str(exported)]))
    with netCDF4.Dataset(exported) as nc:
        assert nc["time"].units == "hour since 0000-01-01 00:00:00"
        assert nc["time"].calendar == "standard"
        np.testing.assert_array_equal(nc["time"][:], np.array(MID_MONTH_DAYS) * 24.0)


def test_a_monthly_climatology_of_twelve_steps_names_the_holdout(tmp_path, clim):
    args = ["train", "--out", str(tmp_path / "run")]
    for s in [*TINY_RUN, f"data.paths=[{clim}]", "tiles.window=4", "tiles.stride=1",
              "train.epochs=1", "data.val_fraction=0.2", "data.climatology=monthly"]:  # fmt: skip
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "val_fraction" in r.output and "month 9" in r.output


def test_a_whole_record_climatology_trains_on_twelve_months_with_a_holdout(tmp_path, clim):
    """The hold-out takes months 10-12 from the training steps; fitted on the whole record,
    the monthly climatology has all twelve (and the checkpoint says which steps it used)."""
    from faextract.checkpoint import load_checkpoint

    args = ["train", "--out", str(tmp_path / "run")]
    for s in [*TINY_RUN, f"data.paths=[{clim}]", "tiles.window=4", "tiles.stride=1",
              "train.epochs=1", "data.val_fraction=0.2", "data.climatology=monthly",
              "data.climatology_period=all"]:  # fmt: skip
        args += ["--set", s]
    r = _ok(runner.invoke(app, args))
    assert "fitted on all 12 steps" in r.output
    stats = load_checkpoint(tmp_path / "run" / "last.pt").stats
    assert stats.sizes["season"] == 12
    assert stats.attrs["climatology_start"].startswith("0000-01-16")
    assert stats.attrs["climatology_end"].startswith("0000-12-1")
    args[-1] = "data.climatology_period=[1990,2000]"
    args[2] = str(tmp_path / "run2")
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "data.climatology_period [1990, 2000]: no step of" in r.output and "0000-01-16" in r.output
