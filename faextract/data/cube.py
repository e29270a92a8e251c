"""Open real climate files as one lazy, standardized cube.

:func:`open_cube` accepts one NetCDF file, a list, a glob, or a Zarr store (v2 or v3) and
returns a :class:`Cube`: an ``xr.Dataset`` whose dimensions are renamed to ``time``,
optional ``level``, ``lat`` and ``lon`` (original names kept in each coordinate's
``original_name`` attribute), backed by dask so nothing is read until a window is needed.

Everything a downstream step must know about the grid (calendar, periodic longitude, the
channel list) travels on the :class:`Cube`, so later stages never reopen or re-guess.
"""

from __future__ import annotations

import glob as globmod
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from faextract.data.axes import classify, detect_axes, parse_dims
from faextract.data.selection import EXPVER, apply_select, choices, fold_expver, parse_select
from faextract.data.time import (
    calendar_of,
    check_monotonic,
    decode_absolute,
    decode_text,
    decode_time,
    is_absolute,
    is_text,
)
from faextract.errors import DataError, FaextractWarning, MissingVariableError, first_line

#: Time steps per dask chunk: windows of 8-64 steps read one or two chunks.
DEFAULT_TIME_CHUNK = 32


@dataclass(frozen=True)
class Cube:
    """A standardized, lazy climate cube.

    ``dataset`` has dims ``(time, [level,] lat, lon)`` per variable; ``channels`` lists the
    model's input channels in order, ``VAR`` or ``VAR@LEVEL`` for stacked levels.
    """

    dataset: xr.Dataset
    variables: tuple[str, ...]
    channels: tuple[str, ...]
    axes: dict[str, str]
    calendar: str
    periodic: bool
    sources: tuple[str, ...] = field(default_factory=tuple)
    #: The per-file datasets before dask chunking, with the cube step each starts at, sorted
    #: by it, for :meth:`read`; empty when the cube's steps are not contiguous runs of them.
    files: tuple[tuple[int, xr.Dataset], ...] = field(default=(), repr=False)
    #: The values kept of non-grid dimensions (``--select``), e.g. ``{"member": "r1i1p1f1"}``.
    select: dict[str, str] = field(default_factory=dict)

    @property
    def source_label(self) -> str:
        """How messages name the cube's files: the one file, or the first and how many more."""
        if not self.sources:
            return "input"
        more = len(self.sources) - 1
        return self.sources[0] + (f" (+{more})" if more else "")

    @property
    def time(self) -> xr.DataArray:
        return self.dataset["time"]

    @property
    def lat(self) -> np.ndarray:
        return self.dataset["lat"].values

    @property
    def lon(self) -> np.ndarray:
        return self.dataset["lon"].values

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, C, H, W)`` of :meth:`to_array`."""
        ds = self.dataset
        return (ds.sizes["time"], len(self.channels), ds.sizes["lat"], ds.sizes["lon"])

    def to_array(self) -> xr.DataArray:
        """The cube as one lazy float32 array ``(time, channel, lat, lon)``; NaN = invalid."""
        parts = []
        for name in self.variables:
            da = fold_expver(self.dataset[name])
            if "level" in da.dims:
                for lev in da["level"].values:
                    parts.append(da.sel(level=lev, drop=True))
            else:
                parts.append(da)
        arr = xr.concat(
            [p.transpose("time", "lat", "lon").astype("float32") for p in parts],
            dim="channel",
            coords="minimal",
            compat="override",
            join="override",
        )
        arr = arr.assign_coords(channel=list(self.channels)).transpose(
            "time", "channel", "lat", "lon"
        )
        arr.name = "cube"
        return arr

    def grid(self) -> dict:
        """Grid and calendar facts, as saved in checkpoints and compared on embed."""
        lat, lon = self.lat, self.lon
        return {
            "nlat": int(lat.size),
            "nlon": int(lon.size),
            "dlat": float(np.median(np.abs(np.diff(lat)))) if lat.size > 1 else 0.0,
            "dlon": float(np.median(np.abs(np.diff(lon)))) if lon.size > 1 else 0.0,
            "lat_range": [float(lat.min()), float(lat.max())],
            "lon_range": [float(lon.min()), float(lon.max())],
            "periodic": bool(self.periodic),
            "calendar": self.calendar,
        }

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Steps ``[t0, t1)`` of :meth:`to_array` as a float32 numpy array ``(T, C, H, W)``.

        Reads through the files' lazy indexing, without building a dask graph: for the
        short blocks that windows need, dask's per-compute overhead costs far more than the
        read itself.
        """
        if not self.files:
            import dask

            with dask.config.set(scheduler="synchronous"):
                return np.asarray(self.to_array().data[t0:t1].compute())
        _, nc, nlat, nlon = self.shape
        out = np.empty((max(0, t1 - t0), nc, nlat, nlon), dtype=np.float32)
        if t1 <= t0:
            return out
        first = np.cumsum([0] + [self._channel_count(name) for name in self.variables])
        pieces = []  # (slot in out, lazily indexed variable)
        for start, ds in self.files:  # sorted by start; each holds some of the variables
            a, b = max(t0, start), min(t1, start + ds.sizes["time"])
            if a < b:
                sub = ds.isel(time=slice(a - start, b - start))
                for i, name in enumerate(self.variables):
                    if name in sub.data_vars:
                        slot = (slice(a - t0, b - t0), slice(first[i], first[i + 1]))
                        pieces.append((slot, sub[name]))

        def fill(piece) -> None:  # written in place: no concatenation copies
            slot, da = piece
            out[slot] = _as_channels(da)

        threads = _reader_threads()
        if len(pieces) > 1 and threads > 1:
            # Decompression (Zarr) and decoding, masking and copying (both) release the GIL:
            # variables read side by side. HDF5 serializes the NetCDF reads themselves.
            list(_reader_pool(threads).map(fill, pieces))
        else:
            for piece in pieces:
                fill(piece)
        return out

    def _channel_count(self, name: str) -> int:
        da = self.dataset[name]
        return da.sizes["level"] if "level" in da.dims else 1

    def isel_time(self, index) -> Cube:
        """A cube restricted to some time steps (a slice or an index array)."""
        files: tuple = ()
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(self.shape[0])
            files = tuple(
                (max(0, start - a), ds.isel(time=slice(max(0, a - start), max(0, b - start))))
                for start, ds in self.files
                if start < b and start + ds.sizes["time"] > a
            )
        return Cube(
            dataset=self.dataset.isel(time=index),
            variables=self.variables,
            channels=self.channels,
            axes=self.axes,
            calendar=self.calendar,
            periodic=self.periodic,
            sources=self.sources,
            files=files,
            select=self.select,
        )


def env_number(
    name: str, default: float, minimum: float = 0, maximum: float = float("inf")
) -> float:
    """A numeric setting from the environment; a bad value is a one-line error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:
        upper = f" and <= {maximum:g}" if maximum < float("inf") else ""
        raise DataError(f"{name}={raw!r}: expected a number >= {minimum:g}{upper}")
    return value


def _reader_threads() -> int:
    """Threads reading a block's variables side by side (``FAEXTRACT_READ_THREADS``)."""
    return int(env_number("FAEXTRACT_READ_THREADS", min(4, os.cpu_count() or 1), minimum=1))


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _reader_pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool (per process id: a pool inherited through fork has no threads)."""
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="faextract-read")
    return _POOLS[key]


def _as_channels(da: xr.DataArray) -> np.ndarray:
    """One variable as ``(time, channels, lat, lon)`` (its levels, or one channel), in the
    file's decoded dtype: the caller converts it while copying into its block."""
    da = fold_expver(da)
    if "level" in da.dims:
        return da.transpose("time", "level", "lat", "lon").values
    return da.transpose("time", "lat", "lon").values[:, None]


def resolve_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand globs and check existence; a Zarr store counts as one path."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DataError("no input given: pass a NetCDF file, a glob, or a Zarr store")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if item.startswith("file://"):
            item = item[len("file://") :]
        if is_url(item):  # a remote store or an OPeNDAP endpoint: checked when opened
            out.append(item)
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            # A path that exists is taken literally ('data[1].nc'), never as a pattern.
            matches = sorted(globmod.glob(item))
            if not matches:
                raise DataError(f"{item}: the pattern matches no file")
            out.extend(matches)
        elif not os.path.exists(item):
            if os.path.islink(item):
                raise DataError(
                    f"{item}: a symbolic link that leads nowhere (a loop, or its target is gone)"
                )
            raise DataError(f"{item}: no such file or directory")
        else:
            out.append(item)
    return out


def is_url(path: str) -> bool:
    """``gs://bucket/era5.zarr``, ``s3://...``, ``https://.../dodsC/...``: not a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def _remote_is_zarr(url: str) -> bool:
    """A URL names a Zarr store unless it is http(s) without ``.zarr`` in it (OPeNDAP/THREDDS
    endpoints, which netCDF-C reads itself)."""
    scheme = url.split("://", 1)[0].lower()
    return scheme not in ("http", "https") or ".zarr" in url.lower()


def _open_remote(url: str) -> xr.Dataset:
    scheme = url.split("://", 1)[0].lower()
    try:
        if _remote_is_zarr(url):
            return xr.open_zarr(url, decode_times=False, chunks=None)
        return xr.open_dataset(url, engine="netcdf4", decode_times=False, chunks=None)
    except ImportError as err:  # fsspec lacks the protocol's package (gcsfs, s3fs, ...)
        hint = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}
        package = hint.get(scheme)
        need = f"pip install {package}" if package else first_line(err)
        raise DataError(f"{url}: reading {scheme}:// needs another package ({need})") from None
    except Exception as err:  # noqa: BLE001 - fsspec, zarr and netCDF-C raise many types
        raise DataError(f"{url}: cannot open the remote dataset: {first_line(err)}") from err


def _is_zarr(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any(
        (p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray", ".zattrs")
    )


#: Per-variable HDF5 chunk cache (MB) for files faextract opens; ``FAEXTRACT_NETCDF_CACHE_MB``
#: overrides it. netCDF-C's default, 64 MB for every variable of every open file, fills with
#: each chunk read and stays while the file is open: a streaming pass over many variables and
#: files grew by hundreds of MB to GBs. Blocks are read in time order, so a cache that holds
#: the chunks straddling one read and the next is all that pays.
NETCDF_CHUNK_CACHE_MB = 8


def _limit_netcdf_chunk_cache() -> None:
    """Set netCDF-C's chunk cache for files opened from now on (a process-wide default)."""
    import netCDF4

    mb = env_number("FAEXTRACT_NETCDF_CACHE_MB", NETCDF_CHUNK_CACHE_MB, maximum=1 << 20)
    size, nelems, preemption = netCDF4.get_chunk_cache()
    if size != int(mb * 2**20):
        netCDF4.set_chunk_cache(int(mb * 2**20), nelems, preemption)


def _open_one(path: str) -> xr.Dataset:
    if is_url(path):
        return _open_remote(path)
    try:
        if _is_zarr(path):
            ds = xr.open_zarr(path, decode_times=False, chunks=None)
            _check_chunks(path, ds)
            return ds
        if os.path.isdir(path):
            files = sorted(p for p in os.listdir(path) if p.endswith((".nc", ".nc4", ".netcdf")))
            hint = f" (for its {len(files)} NetCDF files, give a glob: '{path.rstrip('/')}/*.nc')" if files else ""
            raise DataError(f"{path}: a directory that is not a Zarr store{hint}")
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if not (magic[:3] == b"CDF" or magic[:8] == b"\x89HDF\r\n\x1a\n"):
            raise DataError(f"{path}: not a NetCDF file (unrecognized header {magic[:4]!r})")
        _limit_netcdf_chunk_cache()
        return xr.open_dataset(path, engine="netcdf4", decode_times=False, chunks=None)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - netCDF4/zarr raise many types for bad files
        raise DataError(
            f"{path}: cannot read as NetCDF or Zarr (corrupt or truncated?): {first_line(err)}"
        ) from err


def _check_chunks(path: str, ds: xr.Dataset) -> None:
    """Chunks absent from a Zarr store read as the fill value (NaN: missing data). zarr
    leaves out chunks that hold only the fill value (an all-land tile of SST), but a copy or
    download that did not finish looks the same: say so, once per variable, or refuse with
    ``FAEXTRACT_MISSING_CHUNKS=error``."""
    import warnings

    import zarr

    policy = os.environ.get("FAEXTRACT_MISSING_CHUNKS", "warn").strip().lower()
    if policy not in ("warn", "error", "ignore"):
        raise DataError(f"FAEXTRACT_MISSING_CHUNKS={policy!r}: expected warn, error or ignore")
    if policy == "ignore":
        return
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # noqa: BLE001 - a store zarr cannot list: xarray read it, so go on
        return
    for name in _data_variables(ds):
        try:
            arr = group[name]
            missing = int(arr.nchunks) - int(arr.nchunks_initialized)
        except Exception:  # noqa: BLE001
            continue
        if missing <= 0:
            continue
        text = (
            f"{path}: variable {name!r} lacks {missing} of {arr.nchunks} chunks in the store; they "
            "read as missing values (zarr skips chunks holding only fill values, but an "
            "unfinished copy looks the same)"
        )
        if policy == "error":
            raise DataError(text + "; FAEXTRACT_MISSING_CHUNKS=warn reads them as missing")
        warnings.warn(text, FaextractWarning, stacklevel=2)


def _data_variables(ds: xr.Dataset) -> list[str]:
    """Gridded data variables: at least 3 dims, not bounds or other auxiliary arrays."""
    aux = set()
    for var in ds.variables.values():
        for key in ("bounds", "climatology"):
            if key in var.attrs:
                aux.add(var.attrs[key])
    return [name for name, da in ds.data_vars.items() if da.ndim >= 3 and name not in aux]


def _geographic_2d(ds: xr.Dataset, dims: set[str]) -> dict[str, str]:
    """2-D variables over the data's dims that hold latitude or longitude: name -> "lat"/"lon"."""
    found = {}
    for name, var in ds.variables.items():
        if var.ndim != 2 or not set(var.dims) <= dims:
            continue
        std = str(var.attrs.get("standard_name", "")).lower()
        units = str(var.attrs.get("units", "")).lower()
        if std == "latitude" or units in ("degrees_north", "degree_north"):
            found[name] = "lat"
        elif std == "longitude" or units in ("degrees_east", "degree_east"):
            found[name] = "lon"
    return found


def _rectilinear(ds: xr.Dataset, source: str, dims: set[str]) -> xr.Dataset:
    """Reduce 2-D latitude/longitude to 1-D coordinates where the grid is in fact regular.

    Some tools write ``lat(y, x)`` and ``lon(y, x)`` even for a plain lat/lon grid (latitude
    constant along x, longitude along y): those become the coordinates of ``y`` and ``x``.
    Anything else is a curvilinear grid, which is an error with a hint to regrid.
    """
    for name, kind in _geographic_2d(ds, dims).items():
        values = np.asarray(ds[name].values, dtype=float)
        varying = [
            axis
            for axis in (0, 1)
            if not np.allclose(values, np.take(values, [0], axis=axis), atol=1e-4, equal_nan=True)
        ]
        if len(varying) != 1:
            raise DataError(
                f"{source}: curvilinear grid ({name!r} has dims {ds[name].dims}); only regular "
                "lat/lon grids are supported: regrid first (e.g. with xESMF or CDO remapbil)"
            )
        dim = ds[name].dims[varying[0]]
        line = np.take(values, 0, axis=1 - varying[0])
        attrs = dict(ds[name].attrs, units="degrees_north" if kind == "lat" else "degrees_east")
        attrs["standard_name"] = "latitude" if kind == "lat" else "longitude"
        ds = ds.drop_vars(name).assign_coords({dim: (dim, line, attrs)})
    return ds


def _standardize(
    ds: xr.Dataset,
    source: str,
    *,
    variables: Sequence[str] | None,
    levels: Sequence[float] | None,
    dims: Mapping[str, str],
    sort_time: bool,
    select: Mapping[str, str] | None = None,
) -> tuple[xr.Dataset, dict[str, str], list[str]]:
    candidates = _data_variables(ds)
    if not candidates:
        static = [f"{n}({', '.join(map(str, da.dims))})" for n, da in ds.data_vars.items() if da.ndim == 2]
        if static:
            raise DataError(
                f"{source}: no time dimension: its variables are static maps "
                f"({', '.join(static[:3])}); faextract needs a time axis"
            )
        raise DataError(f"{source}: no gridded data variable (need dims like time, lat, lon)")
    if variables:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise MissingVariableError(source, missing[0], candidates)
        chosen = list(variables)
    else:
        chosen = candidates
    all_dims: list[str] = []
    for v in chosen:
        all_dims.extend(d for d in ds[v].dims if d not in all_dims)
    ds = _rectilinear(ds, source, set(all_dims))
    axes = detect_axes(ds, all_dims, dims, source)
    for need in ("time", "lat", "lon"):
        if need not in axes:
            raise DataError(
                f"{source}: no {need} axis among dimensions {', '.join(all_dims)}; "
                f"name it with --dims {need}=DIM"
            )
    rename = {dim: axis for axis, (dim, _why) in axes.items() if dim != axis}
    # A non-dim variable already called like a target name would clash with the rename.
    clash = [t for t in rename.values() if t in ds.variables and t not in rename]
    ds = ds.drop_vars(clash)
    ds = ds.rename(rename)
    ds = ds[chosen]
    grid = {dim: axis for axis, (dim, _why) in axes.items()} | {axis: axis for axis in axes}
    ds = apply_select(ds, select or {}, source, grid)
    # Only the axes' own coordinates travel on (ERA5's expver(time) strings, scalar height or
    # ensemble numbers would be concatenated across files and read for nothing).
    ds = ds.reset_coords(drop=True)
    for axis, (dim, why) in axes.items():
        if axis not in ds.coords:
            ds = ds.assign_coords({axis: np.arange(ds.sizes[axis])})
        ds[axis].attrs["original_name"] = dim
        ds[axis].attrs["detected_by"] = why

    kept = []
    for v in chosen:
        extra = [d for d in ds[v].dims if d not in ("time", "level", "lat", "lon", EXPVER)]
        kinds = {d: classify(d, ds[d])[0] for d in extra if d in ds.variables}
        other_grid = [(d, axis) for d, axis in kinds.items() if axis in ("lat", "lon")]
        if other_grid:
            dim, axis = other_grid[0]
            raise DataError(
                f"{source}: variable {v!r} is on another {axis} axis ({dim!r}) than "
                f"the grid ({axes[axis][0]!r}); keep the variables of one grid with --variables"
            )
        if extra:
            raise DataError(
                f"{source}: variable {v!r} has extra dimension(s) {', '.join(extra)} "
                f"(dims {ds[v].dims}); keep one value with --select {extra[0]}=VALUE "
                f"({extra[0]} has {choices(ds, extra[0])})"
            )
        lacking = [d for d in ("time", "lat", "lon") if d not in ds[v].dims]
        if lacking:
            if variables:
                raise DataError(f"{source}: variable {v!r} lacks dimension(s) {', '.join(lacking)}")
            continue
        kept.append(v)
    if not kept:
        raise DataError(f"{source}: no variable has time, lat and lon dimensions")
    ds = ds[kept]

    for axis in ("time", "lat", "lon"):
        if ds.sizes[axis] == 0:
            raise DataError(f"{source}: the {axis} axis {axes[axis][0]!r} is empty")
    # Time: decode here (handles reference year 0 and every CF calendar).
    try:
        decoded = _decoded_time(ds["time"], axes["time"][0])
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    if decoded is not None:
        values, attrs, encoding = decoded
        ds = ds.assign_coords(time=("time", values, attrs))
        ds["time"].encoding.update(encoding)
    order = check_monotonic(ds["time"], source, sort_time)
    if order is not None:
        ds = ds.isel(time=order)

    if levels is not None:
        if "level" not in ds.dims:
            raise DataError(f"{source}: --levels given but no variable has a vertical axis")
        ds = ds.isel(level=_level_positions(ds["level"], levels, source))

    lat = ds["lat"].values.astype(float)
    lat_name = axes["lat"][0]
    if not np.isfinite(lat).all():
        raise DataError(f"{source}: latitude {lat_name!r} has missing (NaN) values")
    if lat.size and (np.nanmin(lat) < -90.0001 or np.nanmax(lat) > 90.0001):
        raise DataError(
            f"{source}: latitudes must be in [-90, 90], got [{np.nanmin(lat):g}, {np.nanmax(lat):g}]"
        )
    step = np.diff(lat)
    if lat.size > 1 and not (np.all(step > 0) or np.all(step < 0)):
        i = int(np.nonzero(step == 0)[0][0]) if np.any(step == 0) else None
        if i is not None:
            raise DataError(f"{source}: latitude {lat[i]:g} appears twice in {lat_name!r}")
        bad = int(np.nonzero(np.sign(step) != np.sign(step[0]))[0][0])
        raise DataError(
            f"{source}: latitudes in {lat_name!r} are not sorted ({lat[bad]:g}, then "
            f"{lat[bad + 1]:g}, then {lat[bad + 2]:g}); sort the file first (xarray sortby)"
            if bad + 2 < lat.size
            else f"{source}: latitudes in {lat_name!r} are not sorted; sort the file first"
        )
    if lat.size > 1 and step[0] > 0:
        # One canonical orientation, north to south (as ERA5): the same field stored south to
        # north must give the same embedding, and convolutions are not mirror-symmetric.
        ds = ds.isel(lat=slice(None, None, -1))
    lon = ds["lon"].values.astype(float)
    if lon.size > 1 and not (np.all(np.diff(lon) > 0) or np.all(np.diff(lon) < 0)):
        unwrapped = np.unwrap(lon, period=360.0)
        if not np.all(np.diff(unwrapped) > 0):
            raise DataError(f"{source}: longitudes are not monotonic, even modulo 360")
        attrs = dict(ds["lon"].attrs)
        ds = ds.assign_coords(lon=("lon", unwrapped, attrs))
    return ds, {a: d for a, (d, _w) in axes.items()}, kept


def _decoded_time(t: xr.DataArray, name: str) -> tuple[np.ndarray, dict, dict] | None:
    """The time coordinate decoded: ``(values, attrs, encoding for outputs)``, or None when it
    needs nothing (already dates). Numbers with CF or CDO units, or ISO 8601 text."""
    if is_text(t.values):
        return decode_text(t.values), dict(t.attrs), {}
    if not np.issubdtype(t.dtype, np.number):
        return None
    units = t.attrs.get("units", "")
    calendar = str(t.attrs.get("calendar", "standard")).lower()
    if is_absolute(units):
        values, units = decode_absolute(t.values, units, calendar)
    elif "since" in units:
        values = decode_time(t.values, units, calendar)
    else:
        raise DataError(f"time axis {name!r} has no CF units ('<unit> since <date>')")
    attrs = {k: v for k, v in t.attrs.items() if k not in ("units", "calendar")}
    return values, attrs, {"units": units, "calendar": calendar}


#: Pressure units and their size in Pa, so ``--levels 500,850`` finds 50000 Pa and 85000 Pa.
_PRESSURE_PA = {
    "pa": 1.0,
    "hpa": 100.0,
    "mbar": 100.0,
    "millibar": 100.0,
    "millibars": 100.0,
    "mb": 100.0,
    "kpa": 1000.0,
}


def _level_positions(level: xr.DataArray, wanted: Sequence[float], source: str) -> list[int]:
    """Positions of ``wanted`` on the level axis: exact values, or (on a pressure axis) the
    same pressure given in hPa, the unit people name pressure levels in."""
    have = level.values.astype(float)
    units = str(level.attrs.get("units", "")).strip().lower()
    scale = _PRESSURE_PA.get(units)
    positions = []
    for lev in wanted:
        hit = np.nonzero(np.isclose(have, float(lev)))[0]
        if hit.size == 0 and scale is not None:  # hPa given, axis in `units`
            hit = np.nonzero(np.isclose(have * scale, float(lev) * 100.0))[0]
        if hit.size == 0:
            unit = f" {level.attrs['units']}" if units else ""
            raise DataError(
                f"{source}: level {lev:g} not found; available: "
                f"{', '.join(f'{x:g}' for x in have)}{unit}"
            )
        positions.append(int(hit[0]))
    return positions


def is_periodic(lon: np.ndarray) -> bool:
    """True when a regular longitude axis wraps the globe (n * dlon == 360)."""
    if lon.size < 3:
        return False
    d = np.diff(lon.astype(float))
    step = float(np.median(np.abs(d)))
    if step == 0 or np.max(np.abs(np.abs(d) - step)) > 1e-3 * step:
        return False
    return abs(lon.size * step - 360.0) < 1e-3 * step * lon.size


def _channel_names(ds: xr.Dataset, variables: Sequence[str]) -> list[str]:
    names = []
    for v in variables:
        if "level" in ds[v].dims:
            names.extend(f"{v}@{lev:g}" for lev in ds["level"].values.astype(float))
        else:
            names.append(v)
    return names


def open_cube(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    variables: Sequence[str] | None = None,
    *,
    levels: Sequence[float] | None = None,
    dims: str | Mapping[str, str] | None = None,
    sort_time: bool = False,
    time_chunk: int = DEFAULT_TIME_CHUNK,
    select: str | Mapping[str, object] | None = None,
) -> Cube:
    """Open one or many climate files lazily as a standardized :class:`Cube`.

    Parameters
    ----------
    paths : a NetCDF path, a glob, a Zarr store, or a list of those.
    variables : names to keep (default: every gridded variable with time, lat and lon).
    levels : vertical levels to keep; without it, all levels are stacked as ``VAR@LEVEL`` channels.
    dims : explicit axis mapping, ``"time=T,lat=Y,lon=X"`` or a dict, overriding detection.
    sort_time : sort unsorted times instead of failing (duplicates still fail).
    time_chunk : time steps per dask chunk.
    select : one value of each other dimension, ``"member=3"`` or a dict (see
        :mod:`faextract.data.selection`; ERA5's ``expver`` is combined unless selected).
    """
    paths_ = resolve_paths(paths)
    overrides = parse_dims(dims)
    chosen = parse_select(select)
    opened: list[tuple[str, xr.Dataset]] = []
    try:
        for path in paths_:
            opened.append((path, _open_one(path)))
        groups = _group_by_variables(opened, variables)
        parts = [
            _open_group(members, names, levels, overrides, sort_time, time_chunk, chosen)
            for names, members in groups
        ]
        if len(parts) == 1:
            ds, axes, kept, files = parts[0]
        else:
            ds, axes, kept, files = _merge_groups(parts, [members for _, members in groups])
            if variables:  # channels in the order asked for, as with a single file
                kept = [v for v in variables if v in kept]
    except BaseException:
        # Close now, not whenever the garbage collector gets to it: netCDF-C/HDF5 crashed
        # (segfault) reopening a file whose earlier handle the collector closed mid-open.
        for _path, raw in opened:
            raw.close()
        raise
    cal = calendar_of(ds["time"])
    return Cube(
        dataset=ds,
        variables=tuple(kept),
        channels=tuple(_channel_names(ds, kept)),
        axes=axes,
        calendar=cal,
        periodic=is_periodic(ds["lon"].values),
        sources=tuple(p for _, members in groups for p, _ in members),
        files=files,
        select=dict(chosen),
    )


def _group_by_variables(opened, variables):
    """Files grouped by the variables they hold (one group per variable set, in the order
    first met): a group is one time series split across files, the groups are merged.
    With ``variables``, files holding none of them are left out."""
    groups: dict[tuple[str, ...], list] = {}
    available: list[str] = []
    for path, raw in opened:
        have = _data_variables(raw)
        available += [v for v in have if v not in available]
        names = tuple(v for v in variables if v in have) if variables else None
        if names == ():
            continue
        key = names if names is not None else tuple(have)
        groups.setdefault(key, []).append((path, raw))
    if variables:
        found = {v for key in groups for v in key}
        missing = [v for v in variables if v not in found]
        if missing:
            raise MissingVariableError(opened[0][0], missing[0], available)
    if len(groups) > 1:
        seen: dict[str, str] = {}
        for key, members in groups.items():
            for v in key:
                if v in seen:
                    raise DataError(
                        f"{members[0][0]}: variable {v!r} is also in {seen[v]}, which holds "
                        "other variables; give files with the same variables, or one variable "
                        "per file, or choose variables with --variables"
                    )
                seen[v] = members[0][0]
    return [(list(key) if variables else None, members) for key, members in groups.items()]


def _open_group(members, variables, levels, overrides, sort_time, time_chunk, select):
    """Files with the same variables, concatenated in time -> (dataset, axes, kept, files)."""
    parts = []
    axes: dict[str, str] = {}
    kept: list[str] = []
    for path, raw in members:
        ds, axes, kept_here = _standardize(
            raw,
            path,
            variables=variables,
            levels=levels,
            dims=overrides,
            sort_time=sort_time,
            select=select,
        )
        if parts:
            first_ds, first_path, _ = parts[0]
            _check_same_grid(first_ds, first_path, ds, path, kept, kept_here)
        else:
            kept = kept_here
        # Chunk each file's lazily indexed variables (not the file's own chunks): a dask task
        # then reads just its time slice through the backend, whose chunk cache decompresses
        # each on-disk chunk once. Chunking after opening with the on-disk chunks instead makes
        # every task depend on whole on-disk chunks, e.g. the full time axis of a file written
        # with one chunk per variable, read again for every block.
        parts.append((ds.chunk(_chunks(ds, time_chunk)), path, ds))
    if len(parts) == 1:
        ds = parts[0][0]
        files: tuple = ((0, parts[0][2]),)
    else:
        parts.sort(key=lambda p: p[0]["time"].values[0])
        starts = np.cumsum([0] + [p[0].sizes["time"] for p in parts[:-1]])
        files = tuple((int(s), p[2]) for s, p in zip(starts, parts, strict=True))
        for (a, pa, _), (b, pb, _) in zip(parts, parts[1:], strict=False):
            common = np.intersect1d(a["time"].values, b["time"].values)
            if common.size:
                raise DataError(f"time {common[0]} is duplicated: it is in both {pa} and {pb}")
        encoding = dict(parts[0][0]["time"].encoding)
        ds = xr.concat(
            [p[0] for p in parts],
            dim="time",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
        )
        ds["time"].encoding.update(encoding)
        order = check_monotonic(ds["time"], "combined files", sort_time)
        if order is not None:
            ds = ds.isel(time=order)
            files = ()  # files interleave in time: read through dask
    ds = ds.chunk(_chunks(ds, time_chunk))
    for name in ds.data_vars:
        ds[name].encoding.pop("chunks", None)
        ds[name].encoding.pop("preferred_chunks", None)
    return ds, axes, kept, files


def _merge_groups(parts, members):
    """Merge variable groups (e.g. one variable per file) that share grid and time steps."""
    (first, axes, _, _), first_path = parts[0], members[0][0][0]
    kept: list[str] = []
    files: list | None = []
    levelled = None
    for (ds, _axes, kept_here, group_files), group in zip(parts, members, strict=True):
        path = group[0][0]
        _check_same_grid(first, first_path, ds, path, [], [], merging=True)
        if "level" in ds.dims:  # variables with levels share one level axis
            if levelled is None:
                levelled = (ds, path)
            _check_same_grid(levelled[0], levelled[1], ds, path, [], [], merging=True)
        a, b = first["time"].values, ds["time"].values
        if a.shape != b.shape or not np.all(a == b):
            raise DataError(
                f"{path}: its time steps ({b.size}, {b[0]} .. {b[-1]}) differ from {first_path}'s "
                f"({a.size}, {a[0]} .. {a[-1]}); files with different variables must cover the "
                "same times"
            )
        kept += kept_here
        # Read lazily only if every group can be (no group had to be re-sorted).
        files = files + list(group_files) if files is not None and group_files else None
    ds = xr.merge(
        [p[0] for p in parts], compat="override", join="override", combine_attrs="override"
    )
    ds["time"].encoding.update(parts[0][0]["time"].encoding)
    return ds, axes, kept, tuple(sorted(files, key=lambda f: f[0])) if files else ()


def _chunks(ds: xr.Dataset, time_chunk: int) -> dict[str, int]:
    chunks = {"time": max(1, int(time_chunk)), "lat": -1, "lon": -1}
    if "level" in ds.dims:
        chunks["level"] = -1
    return chunks


def _check_same_grid(
    a: xr.Dataset, a_path: str, b: xr.Dataset, b_path: str, va, vb, *, merging: bool = False
) -> None:
    """Same variables (unless ``merging`` different ones) on the same lat, lon and levels;
    when merging, only one of the two needs a vertical axis."""
    if list(va) != list(vb):
        raise DataError(f"{b_path}: variables {list(vb)} differ from {a_path}: {list(va)}")
    for axis in ("lat", "lon", "level"):
        if (axis in a.dims) != (axis in b.dims):
            if merging and axis == "level":
                continue
            raise DataError(f"{b_path}: has {axis} axis mismatch with {a_path}")
        if axis not in a.dims:
            continue
        x, y = a[axis].values, b[axis].values
        if x.shape != y.shape or not np.allclose(x.astype(float), y.astype(float), atol=1e-6):
            raise DataError(
                f"grids differ: {a_path} has {axis} of size {x.size} "
                f"[{float(x.min()):g}..{float(x.max()):g}], {b_path} has size {y.size} "
                f"[{float(y.min()):g}..{float(y.max()):g}]"
            )
