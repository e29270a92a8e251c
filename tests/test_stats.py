"""Statistics against numpy, climatologies, validation, and the normalize roundtrip."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from faextract.data.cube import open_cube
from faextract.data.normalize import denormalize, normalize
from faextract.data.stats import StatsOptions, compute_stats, load_stats, save_stats
from faextract.errors import DataError
from faextract.testing import synthetic_cube, write_netcdf


def test_unweighted_stats_match_numpy(small_nc):
    cube = open_cube(small_nc)
    st = compute_stats(cube, StatsOptions(area_weighted=False))
    x = cube.to_array().values.astype(np.float64)
    for c, name in enumerate(cube.channels):
        v = x[:, c]
        assert st["mean"].sel(channel=name) == pytest.approx(np.nanmean(v), rel=1e-9)
        assert st["std"].sel(channel=name) == pytest.approx(np.nanstd(v), rel=1e-6)
    assert st["valid_fraction"].sel(channel="sst") < 0.9
    assert st["valid_fraction"].sel(channel="t2m") == 1.0


def test_area_weighting_uses_cos_lat(small_nc):
    cube = open_cube(small_nc)
    st = compute_stats(cube, StatsOptions(area_weighted=True))
    x = cube.to_array().values.astype(np.float64)[:, 1]  # t2m: no NaN
    w = np.cos(np.deg2rad(cube.lat))[None, :, None] * np.ones_like(x)
    assert st["mean"].sel(channel="t2m") == pytest.approx((w * x).sum() / w.sum(), rel=1e-9)
    unweighted = compute_stats(cube, StatsOptions(area_weighted=False))
    # Warm tropics get more weight: the weighted mean temperature is higher.
    assert st["mean"].sel(channel="t2m") > unweighted["mean"].sel(channel="t2m")


@pytest.mark.parametrize("kind", ["monthly", "dayofyear"])
def test_climatology_removes_the_seasonal_cycle(tmp_path, kind):
    ds = synthetic_cube(nt=730, nlat=6, nlon=12, variables=("t2m",), calendar="360_day")
    path = tmp_path / "c.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    plain = compute_stats(cube, StatsOptions(climatology="none"))
    anom = compute_stats(cube, StatsOptions(climatology=kind))
    assert anom["climatology"].shape[0] == (12 if kind == "monthly" else 366)
    assert float(anom["std"][0]) < 0.6 * float(plain["std"][0])
    y = normalize(cube.to_array(), anom).values
    assert abs(np.nanmean(y)) < 0.1 and 0.8 < np.nanstd(y) < 1.2


def test_all_nan_variable_is_an_error(tmp_path, small_ds):
    ds = small_ds.copy()
    ds["sp"] = ds["sp"] * np.nan
    path = tmp_path / "nan.nc"
    write_netcdf(ds, path)
    with pytest.raises(DataError, match="'sp' is all NaN"):
        compute_stats(open_cube(path))


def test_inf_values_are_an_error(tmp_path, small_ds):
    ds = small_ds.copy(deep=True)
    ds["t2m"].values[3, 2, 2] = np.inf
    path = tmp_path / "inf.nc"
    write_netcdf(ds, path)
    with pytest.raises(DataError, match="'t2m' has 1 infinite values"):
        compute_stats(open_cube(path))


@pytest.mark.parametrize("climatology", ["none", "dayofyear"])
def test_normalize_roundtrip(small_nc, climatology):
    cube = open_cube(small_nc)
    st = compute_stats(cube, StatsOptions(climatology=climatology))
    x = cube.to_array()
    y = normalize(x, st)
    back = denormalize(y, st).values
    scale = np.abs(x.values[np.isfinite(x.values)]).max()
    np.testing.assert_allclose(back, x.values, atol=2e-6 * scale, equal_nan=True)
    assert np.array_equal(np.isnan(back), np.isnan(x.values))


def test_normalize_matches_channels_by_name(small_nc):
    cube = open_cube(small_nc)
    st = compute_stats(cube)
    reordered = st.isel(channel=[2, 0, 1])
    x = cube.to_array().isel(time=slice(0, 5))
    np.testing.assert_array_equal(normalize(x, st).values, normalize(x, reordered).values)


def test_channel_missing_from_stats(small_nc):
    cube = open_cube(small_nc)
    st = compute_stats(cube).isel(channel=[0, 1])
    with pytest.raises(DataError, match="'sp' is not in the normalization statistics"):
        normalize(cube.to_array(), st)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_save_load_roundtrip(tmp_path, small_nc, suffix):
    st = compute_stats(open_cube(small_nc), StatsOptions(climatology="dayofyear"))
    path = tmp_path / f"stats{suffix}"
    save_stats(st, path)
    back = load_stats(path)
    xr.testing.assert_allclose(
        back[["mean", "std", "climatology"]], st[["mean", "std", "climatology"]]
    )
    with pytest.raises(DataError, match="already exists"):
        save_stats(st, path)


def test_harmonic_climatology_is_smooth_and_exact_on_harmonics(tmp_path):
    """The harmonic fit recovers a planted seasonal cycle through land masks and gaps, has no
    jump on month boundaries (a monthly climatology on daily data does), and round-trips."""
    from faextract.data.normalize import ArrayNormalizer, denormalize, normalize
    from faextract.evaluate import Calendar, month_jump

    ds = synthetic_cube(nt=730, nlat=6, nlon=12, variables=("sst", "t2m"), seed=4)
    path = tmp_path / "c.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    st = compute_stats(cube, StatsOptions(climatology="harmonic"))
    assert st.attrs["climatology"] == "harmonic" and st.sizes["season"] == 7
    assert np.isnan(st["climatology"].sel(channel="sst").values).any()  # land stays NaN
    x = normalize(cube.to_array(), st)
    back = denormalize(x, st)
    xr.testing.assert_allclose(back, cube.to_array(), rtol=1e-4)
    block = ArrayNormalizer(st, cube.channels, cube.time, 6, 12)(cube.read(0, 730), 0)
    np.testing.assert_allclose(block, x.values, atol=1e-3)
    cal = Calendar.of(cube.time.values, "noleap")
    flat = np.nan_to_num(block).reshape(730, -1)
    assert month_jump(flat, cal) == pytest.approx(1.0, abs=0.1)
    monthly = compute_stats(cube, StatsOptions(climatology="monthly"))
    mblock = ArrayNormalizer(monthly, cube.channels, cube.time, 6, 12)(cube.read(0, 730), 0)
    assert month_jump(np.nan_to_num(mblock).reshape(730, -1), cal) > 1.5


def test_auto_climatology_follows_the_time_step(tmp_path):
    from faextract.data.stats import resolve_climatology

    daily = tmp_path / "d.nc"
    write_netcdf(synthetic_cube(nt=400, nlat=4, nlon=8, variables=("t2m",)), daily)
    monthly = tmp_path / "m.nc"
    write_netcdf(
        synthetic_cube(nt=24, nlat=4, nlon=8, variables=("t2m",), freq_days=365 / 12,
                       start="2000-01-16"),
        monthly,
    )  # fmt: skip
    short = tmp_path / "s.nc"
    write_netcdf(synthetic_cube(nt=100, nlat=4, nlon=8, variables=("t2m",)), short)
    assert resolve_climatology("auto", open_cube(daily))[0] == "harmonic"
    assert resolve_climatology("auto", open_cube(monthly))[0] == "monthly"
    kind, why = resolve_climatology("auto", open_cube(short))
    assert kind == "none" and "seasonal cycle" in why
    assert resolve_climatology("dayofyear", open_cube(short))[0] == "dayofyear"
    st = compute_stats(open_cube(monthly), StatsOptions(climatology="auto"))
    assert st.attrs["climatology"] == "monthly"


def test_a_monthly_climatology_missing_months_says_why(tmp_path):
    path = tmp_path / "m.nc"
    write_netcdf(
        synthetic_cube(nt=9, nlat=4, nlon=8, variables=("t2m",), freq_days=365 / 12,
                       start="2000-01-16"),
        path,
    )  # fmt: skip
    with pytest.raises(DataError, match="month 10.*val_fraction"):
        compute_stats(open_cube(path), StatsOptions(climatology="monthly"))


def _slow_oscillation_cube(tmp_path, days: int = 1460):
    """Daily t2m: an annual cycle plus a 3.7-year oscillation (ENSO-like), no noise."""
    ds = synthetic_cube(nt=days, nlat=4, nlon=8, variables=("t2m",), seed=1)
    t = np.arange(days) / 365.0
    slow = np.sin(2 * np.pi * t / 3.7 + 0.6)
    ds["t2m"].values = (280 + 10 * np.cos(2 * np.pi * t) + 3 * slow)[:, None, None] * np.ones((1, 4, 8))
    path = tmp_path / "slow.nc"
    write_netcdf(ds, path)
    return open_cube(path), slow


@pytest.mark.parametrize("kind", ["harmonic", "monthly", "dayofyear"])
def test_a_reference_period_fits_the_climatology_and_the_data_keeps_its_moments(tmp_path, kind):
    """The climatology comes from the reference steps alone; mean and std describe the
    data's anomalies from it (not the reference's)."""
    cube, _ = _slow_oscillation_cube(tmp_path)
    train = cube.isel_time(slice(0, 500))
    st = compute_stats(train, StatsOptions(climatology=kind, area_weighted=False), reference=cube)
    alone = compute_stats(cube, StatsOptions(climatology=kind, area_weighted=False))
    np.testing.assert_allclose(st["climatology"].values, alone["climatology"].values, rtol=1e-6)
    y = normalize(train.to_array(), st).values
    assert np.nanmean(y) == pytest.approx(0.0, abs=1e-4) and np.nanstd(y) == pytest.approx(1.0, rel=1e-3)
    assert st.attrs["climatology_start"] == str(cube.time.values[0])
    assert st.attrs["climatology_end"] == str(cube.time.values[-1])
    with pytest.raises(DataError, match="reference steps .* do not match"):
        other = synthetic_cube(nt=400, nlat=4, nlon=8, variables=("sp",))
        write_netcdf(other, tmp_path / "o.nc")
        compute_stats(train, StatsOptions(climatology=kind), reference=open_cube(tmp_path / "o.nc"))


def test_a_whole_record_climatology_keeps_the_slow_oscillation_a_short_fit_takes_in(tmp_path):
    """Fitted on 1.7 years, the seasonal cycle takes in part of a 3.7-year oscillation (the
    anomalies lose it); fitted on the whole 4 years it leaves it in the anomalies."""
    cube, slow = _slow_oscillation_cube(tmp_path)
    train = cube.isel_time(slice(0, 620))
    opts = StatsOptions(climatology="harmonic", area_weighted=False)

    def error(stats):  # the anomaly (K) against the planted oscillation, relative to its spread
        st = stats.sel(channel="t2m")
        anom = normalize(train.to_array(), stats).values[:, 0, 0, 0] * float(st["std"]) + float(st["mean"])
        truth = 3 * slow[:620]
        return np.std(anom - truth - (anom - truth).mean()) / np.std(truth)

    own = error(compute_stats(train, opts))
    whole = error(compute_stats(train, opts, reference=cube))
    assert whole < 0.1 and own > 3 * whole
