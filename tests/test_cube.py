"""open_cube on the shapes real files come in, and a clear error for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from faextract.data.cube import open_cube
from faextract.errors import DataError
from faextract.testing import synthetic_cube, write_netcdf


def test_open_single_file_is_lazy_and_standardized(small_nc):
    cube = open_cube(small_nc)
    assert cube.channels == ("sst", "t2m", "sp")
    assert cube.shape == (60, 3, 12, 24)
    assert cube.calendar == "noleap"
    assert cube.periodic
    arr = cube.to_array()
    assert arr.dims == ("time", "channel", "lat", "lon")
    assert arr.chunks is not None, "the cube must stay dask-backed until a window is read"
    # sst is NaN over land, other variables are complete
    first = arr.isel(time=0).values
    assert np.isnan(first[0]).any() and not np.isnan(first[1]).any()


def test_packed_integers_are_decoded(tmp_path, small_ds):
    path = tmp_path / "packed.nc"
    write_netcdf(small_ds, path, packed=True)
    raw = xr.open_dataset(path, mask_and_scale=False)
    assert raw["t2m"].dtype == np.int16
    cube = open_cube(path)
    got = cube.dataset["t2m"].values
    want = small_ds["t2m"].values
    assert np.nanmax(np.abs(got - want)) < 0.05
    assert np.isnan(cube.dataset["sst"].values).sum() == np.isnan(small_ds["sst"].values).sum()


def _strip(ds: xr.Dataset, rename: dict) -> xr.Dataset:
    ds = ds.rename(rename)
    for name in rename.values():
        ds[name].attrs.pop("axis", None)
        ds[name].attrs.pop("standard_name", None)
    return ds


def test_odd_axis_names_detected_from_units(tmp_path, small_ds):
    ds = _strip(small_ds, {"time": "TIME", "lat": "FNOCY", "lon": "COADSX"})
    path = tmp_path / "odd.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    assert cube.axes == {"time": "TIME", "lat": "FNOCY", "lon": "COADSX"}
    assert cube.dataset["lat"].attrs["original_name"] == "FNOCY"


def test_dims_override_and_ambiguity(tmp_path, small_ds):
    ds = small_ds.rename({"lat": "ETOPO20X1_1081", "lon": "XAX"})
    for name in ("ETOPO20X1_1081", "XAX"):
        ds[name].attrs = {}
    ds["XAX"].attrs["units"] = "degrees_north"  # a file with wrong units: two latitude candidates
    ds["ETOPO20X1_1081"].attrs["units"] = "degrees_north"
    path = tmp_path / "ambig.nc"
    write_netcdf(ds, path)
    with pytest.raises(DataError, match="ambiguous lat axis.*'ETOPO20X1_1081'.*'XAX'"):
        open_cube(path)
    cube = open_cube(path, dims="lat=ETOPO20X1_1081,lon=XAX")
    assert cube.axes["lon"] == "XAX"


@pytest.mark.parametrize(
    "calendar", ["standard", "proleptic_gregorian", "noleap", "all_leap", "360_day", "julian"]
)
def test_calendars(tmp_path, calendar):
    ds = synthetic_cube(nt=10, nlat=6, nlon=12, variables=("t2m",), calendar=calendar)
    path = tmp_path / f"{calendar}.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    assert cube.calendar == calendar
    assert cube.time.size == 10
    assert cube.time.dt.dayofyear.values[3] == 4


def test_reference_year_zero_decodes(tmp_path):
    ds = synthetic_cube(nt=12, nlat=6, nlon=12, variables=("t2m",), calendar="standard")
    ds = ds.assign_coords(time=("time", np.arange(12) * 730.0 + 24, dict(ds.time.attrs)))
    ds["time"].attrs["units"] = "hour since 0000-01-01 00:00:00"
    path = tmp_path / "clim.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    t = cube.time.values
    assert t[0].year == 0 and t[0].month == 1 and t[0].day == 2
    assert cube.time.encoding["units"] == "hour since 0000-01-01 00:00:00"


@pytest.mark.parametrize("lon0", [0.0, -180.0, 20.0])
def test_longitude_conventions_are_periodic(tmp_path, lon0):
    ds = synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",), lon0=lon0)
    path = tmp_path / "lon.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    assert cube.periodic
    assert cube.lon.min() >= lon0


def test_regional_grid_is_not_periodic(tmp_path, small_ds):
    path = tmp_path / "region.nc"
    write_netcdf(small_ds.isel(lon=slice(0, 10)), path)
    assert not open_cube(path).periodic


def test_latitude_either_order(tmp_path, small_ds):
    """A south-to-north file is read north to south (one canonical orientation)."""
    path = tmp_path / "south_north.nc"
    write_netcdf(small_ds.isel(lat=slice(None, None, -1)), path)
    cube = open_cube(path)
    assert cube.lat[0] > cube.lat[-1]
    np.testing.assert_array_equal(cube.lat, small_ds.lat.values)
    np.testing.assert_allclose(cube.read(0, 2)[:, 1], small_ds.t2m.values[:2], rtol=1e-6)


def test_levels_stacked_or_selected(tmp_path):
    ds = synthetic_cube(nt=5, nlat=6, nlon=12, variables=("sst", "t2m"), levels=[850.0, 500.0])
    ds = ds.rename({"level": "plev"})
    path = tmp_path / "levels.nc"
    write_netcdf(ds, path)
    cube = open_cube(path)
    assert cube.channels == ("sst", "t2m@850", "t2m@500")
    assert cube.to_array().shape == (5, 3, 6, 12)
    sel = open_cube(path, levels=[500])
    assert sel.channels == ("sst", "t2m@500")
    with pytest.raises(DataError, match="level 700 not found; available: 850, 500"):
        open_cube(path, levels=[700])


def test_many_files_glob_and_list(tmp_path, small_ds):
    for i in range(3):
        write_netcdf(small_ds.isel(time=slice(20 * i, 20 * (i + 1))), tmp_path / f"part{i}.nc")
    by_glob = open_cube(str(tmp_path / "part*.nc"))
    by_list = open_cube([tmp_path / "part2.nc", tmp_path / "part0.nc", tmp_path / "part1.nc"])
    assert by_glob.shape == by_list.shape == (60, 3, 12, 24)
    np.testing.assert_array_equal(by_glob.to_array().values, by_list.to_array().values)
    assert by_glob.source_label == f"{tmp_path / 'part0.nc'} (+2)"  # how messages name them


def test_zarr_v2_and_v3(tmp_path, small_ds):
    for fmt in (2, 3):
        path = tmp_path / f"cube_v{fmt}.zarr"
        small_ds.to_zarr(path, zarr_format=fmt)
        cube = open_cube(path)
        assert cube.shape == (60, 3, 12, 24)
        np.testing.assert_allclose(cube.dataset["t2m"].values, small_ds["t2m"].values)


def test_sort_time(tmp_path, small_ds):
    path = tmp_path / "shuffled.nc"
    write_netcdf(small_ds.isel(time=[2, 0, 1, 3]), path)
    with pytest.raises(DataError, match="not increasing.*--sort-time"):
        open_cube(path)
    cube = open_cube(path, sort_time=True)
    np.testing.assert_array_equal(cube.dataset["t2m"].values, small_ds["t2m"].values[:4])


# -- bad input: each a one-line DataError naming the problem -----------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_cube(tmp_path / "nope.nc")


def test_glob_matches_nothing(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        open_cube(str(tmp_path / "*.nc"))


def test_not_netcdf(tmp_path):
    path = tmp_path / "notes.nc"
    path.write_text("hello")
    with pytest.raises(DataError, match="not a NetCDF file"):
        open_cube(path)


def test_truncated_file(tmp_path, small_nc):
    data = small_nc.read_bytes()
    bad = tmp_path / "truncated.nc"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated.nc: cannot read"):
        open_cube(bad).to_array().values  # noqa: B018


def test_unknown_variable_lists_available(small_nc):
    with pytest.raises(DataError, match="unknown variable 'msl'; available: sst, t2m, sp"):
        open_cube(small_nc, ["msl"])


def test_no_time_axis(tmp_path, small_ds):
    ds = small_ds.rename({"time": "step"})
    ds["step"].attrs = {}
    path = tmp_path / "notime.nc"
    write_netcdf(ds, path)
    with pytest.raises(DataError, match="no time axis"):
        open_cube(path)


def test_curvilinear_grid(tmp_path):
    y, x = np.arange(4), np.arange(5)
    lat2d = np.add.outer(np.linspace(-10, 10, 4), np.zeros(5))
    lon2d = np.add.outer(np.zeros(4), np.linspace(0, 40, 5)) + lat2d * 0.1
    ds = xr.Dataset(
        {"t2m": (("time", "y", "x"), np.random.default_rng(0).random((3, 4, 5)).astype("float32"))},
        coords={
            "time": ("time", np.arange(3.0), {"units": "days since 2000-01-01"}),
            "y": y,
            "x": x,
            "nav_lat": (("y", "x"), lat2d, {"standard_name": "latitude", "units": "degrees_north"}),
            "nav_lon": (("y", "x"), lon2d, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )
    path = tmp_path / "curvi.nc"
    ds.to_netcdf(path)
    with pytest.raises(DataError, match="curvilinear grid"):
        open_cube(path)


def test_mismatched_grids_name_both_files(tmp_path, small_ds):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    write_netcdf(small_ds.isel(time=slice(0, 5)), a)
    coarse = synthetic_cube(
        nt=5, nlat=6, nlon=12, variables=("sst", "t2m", "sp"), start="2000-01-06"
    )
    write_netcdf(coarse, b)
    with pytest.raises(DataError, match=r"grids differ: .*a\.nc.*b\.nc"):
        open_cube([a, b])


def test_duplicate_times(tmp_path, small_ds):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    write_netcdf(small_ds.isel(time=slice(0, 10)), a)
    write_netcdf(small_ds.isel(time=slice(5, 15)), b)
    with pytest.raises(DataError, match="duplicated"):
        open_cube([a, b])
    with pytest.raises(DataError, match="duplicated"):
        open_cube([a, b], sort_time=True)


def test_inputs_are_not_modified(small_nc):
    before = small_nc.read_bytes()
    cube = open_cube(small_nc)
    cube.to_array().values  # noqa: B018
    assert small_nc.read_bytes() == before


# -- Cube.read (the streaming path) equals to_array (the dask path) ----------------------


def _check_reads(cube, spans=((0, 5), (3, 17), (0, None), (7, 8))):
    full = cube.to_array().values
    for t0, t1 in spans:
        t1 = full.shape[0] if t1 is None else t1
        got = cube.read(t0, t1)
        assert got.dtype == np.float32 and got.shape == (t1 - t0, *full.shape[1:])
        np.testing.assert_array_equal(got, full[t0:t1])


def test_read_single_file_levels_packed_and_one_chunk(tmp_path):
    ds = synthetic_cube(nt=30, nlat=6, nlon=12, variables=("sst", "t2m"), levels=[850.0, 500.0])
    path = tmp_path / "one_chunk.nc"
    write_netcdf(ds, path, packed=True)  # netCDF4 stores the whole time axis as one chunk
    cube = open_cube(path)
    assert cube.files, "a single file is read through its lazy indexing"
    _check_reads(cube)
    _check_reads(open_cube(path, levels=[500]))
    _check_reads(open_cube(path, time_chunk=4))


@pytest.mark.parametrize("threads", [1, 3])
def test_read_across_files_and_time_ranges(tmp_path, small_ds, threads, monkeypatch):
    monkeypatch.setenv("FAEXTRACT_READ_THREADS", str(threads))  # variables side by side or not
    for i in range(3):
        write_netcdf(small_ds.isel(time=slice(20 * i, 20 * (i + 1))), tmp_path / f"part{i}.nc")
    cube = open_cube([tmp_path / "part2.nc", tmp_path / "part0.nc", tmp_path / "part1.nc"])
    assert [start for start, _ in cube.files] == [0, 20, 40]
    _check_reads(cube, spans=((0, 60), (15, 45), (19, 21), (40, 41), (59, 60)))
    part = cube.isel_time(slice(10, 50))
    assert part.shape[0] == 40 and part.files
    _check_reads(part, spans=((0, 40), (5, 35), (9, 11), (30, 40)))
    _check_reads(cube.isel_time(np.array([3, 1, 2])), spans=((0, 3),))  # dask fallback


def test_read_zarr_and_interleaved_files(tmp_path, small_ds):
    small_ds.to_zarr(tmp_path / "c.zarr")
    _check_reads(open_cube(tmp_path / "c.zarr"))
    # Files whose times interleave: the combined cube is sorted and read through dask.
    write_netcdf(small_ds.isel(time=slice(0, 60, 2)), tmp_path / "even.nc")
    write_netcdf(small_ds.isel(time=slice(1, 60, 2)), tmp_path / "odd.nc")
    both = open_cube([tmp_path / "even.nc", tmp_path / "odd.nc"], sort_time=True)
    assert not both.files
    _check_reads(both)
    np.testing.assert_allclose(both.read(0, 60)[:, 0], small_ds["sst"].values, rtol=1e-6)


# -- one variable per file (CMIP, ERA5 downloads), also split in time ---------------------


def _split_files(tmp_path, ds, names, pieces=2):
    n = ds.sizes["time"] // pieces
    for v in names:
        for i in range(pieces):
            write_netcdf(ds[[v]].isel(time=slice(n * i, n * (i + 1))), tmp_path / f"{v}_{i}.nc")


def test_one_variable_per_file_is_merged(tmp_path):
    ds = synthetic_cube(nt=40, nlat=6, nlon=12, variables=("sst", "t2m", "sp"), levels=[850.0])
    _split_files(tmp_path, ds, ("sst", "t2m", "sp"))
    write_netcdf(ds, tmp_path / "whole.nc.ref")
    whole = open_cube(tmp_path / "whole.nc.ref", ["sst", "t2m", "sp"])
    split = open_cube(str(tmp_path / "*.nc"), ["sst", "t2m", "sp"])
    assert split.channels == whole.channels == ("sst", "t2m@850", "sp@850")
    assert split.shape == whole.shape and len(split.sources) == 6
    np.testing.assert_array_equal(split.to_array().values, whole.to_array().values)
    _check_reads(split, spans=((0, 40), (13, 27), (19, 21)))
    # without --variables: every variable, in the order the (sorted) files give them
    assert set(open_cube(str(tmp_path / "*.nc")).channels) == set(whole.channels)
    # files holding none of the asked variables are left out
    only = open_cube(str(tmp_path / "*.nc"), ["t2m"])
    assert only.channels == ("t2m@850",) and len(only.sources) == 2


def test_split_variables_must_share_times_and_not_repeat(tmp_path):
    ds = synthetic_cube(nt=40, nlat=6, nlon=12, variables=("sst", "t2m"))
    write_netcdf(ds[["sst"]], tmp_path / "sst.nc")
    write_netcdf(ds[["t2m"]].isel(time=slice(0, 30)), tmp_path / "t2m.nc")
    with pytest.raises(DataError, match=r"t2m.nc: its time steps \(30, .*differ from .*sst.nc"):
        open_cube([tmp_path / "sst.nc", tmp_path / "t2m.nc"])
    write_netcdf(ds, tmp_path / "both.nc")
    with pytest.raises(DataError, match="variable 'sst' is also in"):
        open_cube([tmp_path / "both.nc", tmp_path / "sst.nc"])


def test_netcdf_chunk_cache_is_bounded(small_nc, monkeypatch):
    """netCDF-C keeps a 64 MB cache per variable of every open file by default; a streaming
    pass over many files and variables grew by GBs. faextract opens files with a small one."""
    import netCDF4

    from faextract.data import sources as cube_mod

    open_cube(small_nc)
    assert netCDF4.get_chunk_cache()[0] == cube_mod.NETCDF_CHUNK_CACHE_MB * 2**20
    monkeypatch.setenv("FAEXTRACT_NETCDF_CACHE_MB", "2")
    open_cube(small_nc)
    assert netCDF4.get_chunk_cache()[0] == 2 * 2**20


def _with_members(ds: xr.Dataset, dim: str, values) -> xr.Dataset:
    """``ds`` repeated along a new leading ``dim`` (member k is the field plus k)."""
    members = [ds + float(k) for k in range(len(values))]
    out = xr.concat(members, dim=dim, data_vars="all").assign_coords({dim: list(values)})
    return out.transpose(dim, ...)


def test_select_one_member(tmp_path, small_ds):
    ds = _with_members(small_ds[["t2m"]], "member", ["r1i1p1f1", "r2i1p1f1", "r3i1p1f1"])
    path = tmp_path / "ens.nc"
    ds.to_netcdf(path)
    # The refusals come first: with HDF5's bug (HDFGroup/hdf5#5359) a file with string
    # coordinates segfaults when reopened after one of two open handles to it was closed.
    with pytest.raises(DataError, match=r"--select member=VALUE \(member has r1i1p1f1, r2i1p1f1"):
        open_cube(path)
    with pytest.raises(DataError, match=r"--select member=r9: no such value; member has r1i1p1f1"):
        open_cube(path, select={"member": "r9"})
    with pytest.raises(DataError, match="--select lat=3: 'lat' is the lat axis of the grid"):
        open_cube(path, select="member=r1i1p1f1,lat=3")
    with pytest.raises(DataError, match="--select number=0: no dimension 'number'"):
        open_cube(path, select="number=0")
    with pytest.raises(DataError, match="expected DIM=VALUE"):
        open_cube(path, select="member")
    cube = open_cube(path, select="member=r2i1p1f1")
    assert cube.channels == ("t2m",) and "member" not in cube.dataset.dims
    want = small_ds["t2m"].values[:5] + 1.0
    np.testing.assert_allclose(cube.read(0, 5)[:, 0], want, rtol=1e-6)
    np.testing.assert_allclose(cube.to_array()[:5, 0].values, want, rtol=1e-6)


def test_select_by_number_and_by_position(tmp_path, small_ds):
    ds = _with_members(small_ds[["t2m"]], "number", [0, 5, 10])
    ds.to_netcdf(tmp_path / "numbered.nc")
    cube = open_cube(tmp_path / "numbered.nc", select={"number": 10})
    np.testing.assert_allclose(cube.read(0, 2)[:, 0], small_ds["t2m"].values[:2] + 2.0, rtol=1e-6)
    bare = ds.drop_vars("number")  # a dimension without coordinate values: by position
    bare.to_netcdf(tmp_path / "bare.nc")
    cube = open_cube(tmp_path / "bare.nc", select="number=1")
    np.testing.assert_allclose(cube.read(0, 2)[:, 0], small_ds["t2m"].values[:2] + 1.0, rtol=1e-6)
    with pytest.raises(DataError, match="position out of range 0..2"):
        open_cube(tmp_path / "bare.nc", select="number=3")


def test_era5_expver_is_combined_first_valid(tmp_path, small_ds):
    """CDS downloads straddling ERA5T: expver 1 (final) until some step, 5 (preliminary) after."""
    t2m = small_ds["t2m"]
    final = t2m.where(t2m.time < t2m.time[40])
    prelim = (t2m + 100.0).where(t2m.time >= t2m.time[35])  # overlaps: final data wins there
    ds = xr.concat([final, prelim], dim="expver").assign_coords(expver=["0001", "0005"])
    ds = ds.to_dataset(name="t2m").transpose("time", "expver", ...)
    path = tmp_path / "era5.nc"
    ds.to_netcdf(path)
    cube = open_cube(path)
    assert cube.channels == ("t2m",)
    want = np.concatenate([t2m.values[:40], t2m.values[40:] + 100.0])
    np.testing.assert_allclose(cube.read(30, 50)[:, 0], want[30:50], rtol=1e-6)
    np.testing.assert_allclose(cube.to_array()[:, 0].values, want, rtol=1e-6)
    only_final = open_cube(path, select="expver=0001")  # or keep one version explicitly
    assert np.isnan(only_final.read(45, 46)).all()
    # Yearly downloads: only the latest file holds expver (older years are final data).
    ds.isel(time=slice(0, 30), expver=0, drop=True).to_netcdf(tmp_path / "old.nc")
    ds.isel(time=slice(30, 60)).to_netcdf(tmp_path / "new.nc")
    mixed = open_cube([tmp_path / "old.nc", tmp_path / "new.nc"])
    np.testing.assert_allclose(mixed.read(20, 50)[:, 0], want[20:50], rtol=1e-6)
    np.testing.assert_allclose(mixed.to_array()[:, 0].values, want, rtol=1e-6)


def test_levels_in_hpa_on_a_pascal_axis(tmp_path):
    ds = synthetic_cube(nt=4, nlat=6, nlon=12, variables=("t2m",), levels=[850.0, 500.0])
    ds = ds.assign_coords(level=("level", [85000.0, 50000.0], {"units": "Pa", "axis": "Z"}))
    path = tmp_path / "pa.nc"
    write_netcdf(ds, path)
    assert open_cube(path, levels=[500]).channels == ("t2m@50000",)
    assert open_cube(path, levels=[50000]).channels == ("t2m@50000",)
    with pytest.raises(DataError, match="level 700 not found; available: 85000, 50000 Pa"):
        open_cube(path, levels=[700])


def test_two_dimensional_coordinates_of_a_regular_grid(tmp_path, small_ds):
    """lat(y, x) / lon(y, x) that are constant along one axis are a plain lat/lon grid."""
    lat, lon = small_ds["lat"].values, small_ds["lon"].values
    ds = small_ds.rename({"lat": "y", "lon": "x"}).drop_vars(["y", "x"])
    ds = ds.assign_coords(
        nav_lat=(("y", "x"), np.repeat(lat[:, None], lon.size, 1), {"units": "degrees_north"}),
        nav_lon=(("y", "x"), np.repeat(lon[None], lat.size, 0), {"units": "degrees_east"}),
    )
    path = tmp_path / "rect2d.nc"
    ds.to_netcdf(path)
    cube = open_cube(path)
    assert cube.axes == {"time": "time", "lat": "y", "lon": "x"}
    np.testing.assert_allclose(np.sort(cube.lat), np.sort(lat))
    assert cube.periodic


def test_cdo_absolute_time_axis(tmp_path, small_ds):
    """CDO writes ``day as %Y%m%d.%f`` (e.g. after ``cdo -a``): 20000131.5 is Jan 31, 12:00."""
    days = [20000130.0, 20000130.5, 20000131.0, 20000131.5, 20000201.0, 20000201.25]
    ds = small_ds.isel(time=slice(0, len(days))).drop_vars("time")
    ds = ds.assign_coords(
        time=("time", days, {"units": "day as %Y%m%d.%f", "calendar": "proleptic_gregorian"})
    )
    path = tmp_path / "cdo.nc"
    ds.to_netcdf(path)
    cube = open_cube(path)
    got = cube.time.values.astype("datetime64[h]").astype(str).tolist()
    assert got[0] == "2000-01-30T00" and got[3] == "2000-01-31T12" and got[5] == "2000-02-01T06"
    bad = ds.assign_coords(time=("time", [20000132.0 + i for i in range(6)], ds.time.attrs))
    bad.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(DataError, match="bad.nc: time value 20000132 is not a date"):
        open_cube(tmp_path / "bad.nc")


def test_parse_select():
    from faextract.data.selection import parse_select

    assert parse_select("member=r1i1p1f1, number = 3,") == {"member": "r1i1p1f1", "number": "3"}
    assert parse_select({"number": 3}) == {"number": "3"}
    assert parse_select(None) == {} and parse_select("") == {}
    with pytest.raises(DataError, match="expected DIM=VALUE pairs like 'member=3', got 'x'"):
        parse_select("x")


def test_remote_zarr_store_through_fsspec(small_ds, small_nc):
    """A URL is opened through fsspec (memory:// here; gs://, s3:// with their packages)."""
    url = "memory://faextract-test/cube.zarr"
    small_ds.to_zarr(url, mode="w", consolidated=True)
    remote, local = open_cube(url, ["sst", "t2m", "sp"]), open_cube(small_nc)
    assert remote.sources == (url,) and remote.channels == local.channels
    np.testing.assert_allclose(remote.read(5, 25), local.read(5, 25), rtol=1e-6, equal_nan=True)
    assert open_cube(f"file://{small_nc}").shape == local.shape
    with pytest.raises(DataError, match="nosuch://x.zarr: cannot open the remote dataset"):
        open_cube("nosuch://x.zarr")


def test_a_missing_fsspec_backend_names_the_package():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(DataError, match=r"gs://bucket/era5.zarr: .*\(pip install gcsfs\)"):
        open_cube("gs://bucket/era5.zarr")


def test_time_gaps_are_found_in_any_calendar():
    import cftime
    import pandas as pd

    from faextract.data.time import time_gaps

    daily = pd.date_range("2001-01-01", periods=40).delete([10, 11, 12])  # 3 missing days
    gaps = time_gaps(xr.DataArray(daily.values, dims="time"))
    assert gaps == {"count": 1, "largest": "4 days", "after": str(daily.values[9])}
    joined = [cftime.DatetimeNoLeap(1990 + y // 12, 1 + y % 12, 15) for y in range(24)]
    joined += [cftime.DatetimeNoLeap(2000 + y // 12, 1 + y % 12, 15) for y in range(24)]
    gaps = time_gaps(xr.DataArray(joined, dims="time"), "noleap")
    assert (
        gaps["count"] == 1 and gaps["largest"] == "2951 days"
    )  # 1991-12-15 -> 2000-01-15: 8 x 365 + 31
    months = [cftime.Datetime360Day(2000 + m // 12, 1 + m % 12, 1) for m in range(30)]
    assert time_gaps(xr.DataArray(months, dims="time"), "360_day") is None
    gregorian = pd.date_range("2000-01-01", periods=30, freq="MS")  # 28-31 days apart
    assert time_gaps(xr.DataArray(gregorian.values, dims="time")) is None


def test_time_written_as_text(tmp_path, small_ds):
    ds = small_ds.isel(time=slice(0, 4)).drop_vars("time")
    stamps = ["2001-01-01T00:00:00", "2001-01-01T06:00:00", "2001-01-01T12:00", "2001-01-01 18:00"]
    ds.assign_coords(time=("time", stamps)).to_netcdf(tmp_path / "text.nc")
    cube = open_cube(tmp_path / "text.nc")
    assert cube.time.values.astype("datetime64[h]").astype(str).tolist() == [
        "2001-01-01T00", "2001-01-01T06", "2001-01-01T12", "2001-01-01T18"
    ]  # fmt: skip
    ds.assign_coords(time=("time", ["a", "b", "c", "d"])).to_netcdf(tmp_path / "junk.nc")
    with pytest.raises(DataError, match="junk.nc: time is text but not ISO 8601 dates"):
        open_cube(tmp_path / "junk.nc")


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day"])
def test_months_and_years_since(tmp_path, small_ds, calendar):
    """Monthly and yearly products (GPCP, derived CMIP files) count calendar months/years."""
    from faextract.data.time import decode_time

    got = decode_time(np.array([0, 1, 13, 25]), "months since 2000-01-15", calendar)
    assert [(t.year, t.month, t.day) for t in _as_cftime(got, calendar)] == [
        (2000, 1, 15), (2000, 2, 15), (2001, 2, 15), (2002, 2, 15)
    ]  # fmt: skip
    got = decode_time(np.array([0, 2]), "years since 1850-07-01", calendar)
    assert [(t.year, t.month) for t in _as_cftime(got, calendar)] == [(1850, 7), (1852, 7)]
    if calendar != "360_day":  # (CF's own 360_day months are exact: decoded by cftime)
        ends = decode_time(np.array([0, 1, 2]), "months since 2001-01-31", calendar)
        assert [t.day for t in _as_cftime(ends, calendar)] == [31, 28, 31]  # clamped, not drifted
        with pytest.raises(DataError, match="fractional values"):
            decode_time(np.array([0.5]), "months since 2000-01-01", calendar)
    ds = small_ds.isel(time=slice(0, 3)).drop_vars("time")
    units = {"units": "months since 2000-01-01", "calendar": calendar}
    ds.assign_coords(time=("time", [0.0, 1.0, 2.0], units)).to_netcdf(tmp_path / "m.nc")
    assert open_cube(tmp_path / "m.nc").shape[0] == 3
    bad = ds.assign_coords(time=("time", [0.0, 1.0, 2.0], {"units": "fortnights since 2000-01-01"}))
    bad.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(DataError, match="bad.nc: cannot decode time units 'fortnights since"):
        open_cube(tmp_path / "bad.nc")


def _as_cftime(values, calendar):
    from faextract.data.time import to_cftime

    return to_cftime(values, calendar)


@pytest.mark.parametrize("calendar", ["standard", "noleap"])
def test_select_a_forecast_initialization_time(tmp_path, small_ds, calendar):
    """A date-valued dimension (stored as numbers with CF units) is selected by its date."""
    ds = _with_members(small_ds[["t2m"]], "init", [0.0, 36.0])
    ds["init"].attrs.update(units="hours since 2020-01-01", calendar=calendar)
    ds.to_netcdf(tmp_path / "fc.nc")
    with pytest.raises(DataError, match=r"init has 2020-01-01.00:00:00, 2020-01-02.12:00:00"):
        open_cube(tmp_path / "fc.nc")
    cube = open_cube(tmp_path / "fc.nc", select="init=2020-01-02T12:00")
    np.testing.assert_allclose(cube.read(0, 2)[:, 0], small_ds["t2m"].values[:2] + 1.0, rtol=1e-6)


def test_staggered_variables_are_named_and_stronger_evidence_wins(tmp_path, small_ds):
    """lon (standard_name) beats lon_u (units only) as the grid's longitude; the variable on
    lon_u is named with the way out (--variables), not offered a --select."""
    ds = small_ds[["t2m"]]
    ds["lon"].attrs["standard_name"] = "longitude"
    u = xr.DataArray(
        np.zeros((ds.sizes["time"], ds.sizes["lat"], ds.sizes["lon"]), "f4"),
        dims=("time", "lat", "lon_u"),
        coords={"lon_u": ("lon_u", ds["lon"].values + 7.5, {"units": "degrees_east"})},
    )
    ds.assign(u=u).to_netcdf(tmp_path / "stagger.nc")
    with pytest.raises(DataError, match=r"'u' is on another lon axis \('lon_u'\) than the grid"):
        open_cube(tmp_path / "stagger.nc")
    assert open_cube(tmp_path / "stagger.nc", ["t2m"]).axes["lon"] == "lon"


def test_an_empty_time_axis_is_named(tmp_path, small_ds):
    small_ds.isel(time=slice(0, 0)).to_netcdf(tmp_path / "empty.nc")
    with pytest.raises(DataError, match="empty.nc: the time axis 'time' is empty"):
        open_cube(tmp_path / "empty.nc")


def test_bad_reader_settings_are_named(small_nc, monkeypatch):
    monkeypatch.setenv("FAEXTRACT_READ_THREADS", "auto")
    with pytest.raises(DataError, match="FAEXTRACT_READ_THREADS='auto': expected a number >= 1"):
        open_cube(small_nc).read(0, 2)
    monkeypatch.delenv("FAEXTRACT_READ_THREADS")
    monkeypatch.setenv("FAEXTRACT_NETCDF_CACHE_MB", "-3")
    with pytest.raises(DataError, match="FAEXTRACT_NETCDF_CACHE_MB='-3': expected a number >= 0"):
        open_cube(small_nc)


def test_time_step_of_monthly_data_with_an_even_number_of_steps():
    import pandas as pd

    from faextract.data.time import time_step

    months = pd.date_range("2000-01-01", periods=5, freq="MS")  # median of 31, 29, 31, 30 days
    assert time_step(xr.DataArray(months.values, dims="time")) == "1 month"  # not "732 hours"
    weeks = pd.date_range("2000-01-01", periods=5, freq="7D")
    assert time_step(xr.DataArray(weeks.values, dims="time")) == "7 days"


def test_latitude_order_does_not_change_the_embedding(tmp_path, tiny_checkpoint):
    """The same data stored south to north reads as north to south and embeds bitwise alike."""
    from faextract.embed import EmbedOptions, embed
    from faextract.store import open_embeddings

    cube, ckpt, ds = tiny_checkpoint
    flipped = tmp_path / "ascending.nc"
    write_netcdf(ds.isel(lat=slice(None, None, -1)), flipped)
    a, b = open_cube(cube), open_cube(flipped)
    assert np.array_equal(a.lat, b.lat) and a.lat[0] > a.lat[-1]
    np.testing.assert_array_equal(a.read(0, 5), b.read(0, 5))
    embed([cube], ckpt, str(tmp_path / "a.zarr"), EmbedOptions())
    embed([flipped], ckpt, str(tmp_path / "b.zarr"), EmbedOptions())
    za = open_embeddings(tmp_path / "a.zarr").embedding.values
    zb = open_embeddings(tmp_path / "b.zarr").embedding.values
    np.testing.assert_array_equal(za, zb)


@pytest.mark.parametrize(
    "lat, message",
    [([60.0, 20.0, np.nan, -20.0, -60.0], "missing \\(NaN\\)"),
     ([60.0, -20.0, 20.0, -60.0, -70.0], "not sorted"),
     ([60.0, 20.0, 20.0, -20.0, -60.0], "appears twice")],
)  # fmt: skip
def test_bad_latitude_axes_are_named(tmp_path, lat, message):
    import netCDF4

    path = tmp_path / "bad-lat.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", 3)
        nc.createDimension("lat", 5)
        nc.createDimension("lon", 8)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0, 1, 2]
        la = nc.createVariable("lat", "f8", ("lat",))
        la.units = "degrees_north"
        la[:] = lat
        lo = nc.createVariable("lon", "f8", ("lon",))
        lo.units = "degrees_east"
        lo[:] = np.arange(8) * 45.0
        v = nc.createVariable("t2m", "f4", ("time", "lat", "lon"))
        v[:] = np.ones((3, 5, 8))
    with pytest.raises(DataError, match=message):
        open_cube(path)


def test_missing_zarr_chunks_are_reported(tmp_path, monkeypatch):
    """A chunk absent from a Zarr input reads as missing values: a warning names the variable
    and the count, and FAEXTRACT_MISSING_CHUNKS=error refuses the store."""
    import shutil

    from faextract.errors import FaextractWarning

    path = tmp_path / "c.zarr"
    ds = synthetic_cube(nt=20, nlat=6, nlon=12, variables=("t2m",))
    ds.to_zarr(path, encoding={"t2m": {"chunks": (5, 6, 12)}})
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_cube(path)
    assert not [w for w in caught if issubclass(w.category, FaextractWarning)]
    shutil.rmtree(path / "t2m" / "c" / "1")
    with pytest.warns(FaextractWarning, match="'t2m' lacks 1 of 4 chunks"):
        cube = open_cube(path)
    assert np.isnan(cube.read(5, 10)).all()
    monkeypatch.setenv("FAEXTRACT_MISSING_CHUNKS", "error")
    with pytest.raises(DataError, match="lacks 1 of 4 chunks"):
        open_cube(path)



@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day"])
def test_a_period_selects_the_steps_between_its_dates_in_any_calendar(calendar):
    import cftime

    from faextract.data.time import steps_in_period

    times = np.array([cftime.datetime(y, m, 15, calendar=calendar) for y in (1990, 1991, 1992) for m in range(1, 13)])
    assert steps_in_period(times, calendar, 1991, 1991).tolist() == list(range(12, 24))
    assert steps_in_period(times, calendar, "1990-06", "1991-02").tolist() == list(range(5, 14))
    assert steps_in_period(times, calendar, "1990-06-16", "1990-07-15").tolist() == [6]
    import datetime

    assert steps_in_period(times, calendar, datetime.date(1992, 12, 1), 2100).tolist() == [35]
    assert steps_in_period(times, calendar, 0, 10).size == 0


def test_a_period_bound_that_is_not_a_date_is_named():
    from faextract.data.time import date_key
    from faextract.errors import DataError

    assert date_key(0) == (0, 1, 1) and date_key("2020", end=True) == (2020,)
    with pytest.raises(DataError, match="YYYY-MM-DD, got 'soon'"):
        date_key("soon")
    with pytest.raises(DataError, match="not a date"):
        date_key("2020-02-40")
