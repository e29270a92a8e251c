"""Open real climate files as one lazy, standardized cube.

:func:`open_cube` accepts one NetCDF file, a list, a glob, or a Zarr store (v2 or v3) and
returns a :class:`Cube`: an ``xr.Dataset`` whose dimensions are renamed to ``time``,
optional ``level``, ``lat`` and ``lon`` (original names kept in each coordinate's
``original_name`` attribute), backed by dask so nothing is read until a window is needed.

Everything a downstream step must know about the grid (calendar, periodic longitude, the
channel list) travels on the :class:`Cube`, so later stages never reopen or re-guess.

Opening runs :mod:`~faextract.data.sources` (find and open each file) ->
:mod:`~faextract.data.standardize` (axes, time, levels, orientation) ->
:mod:`~faextract.data.merge` (many files joined in time, variable groups merged); this module
holds the :class:`Cube` and its threaded block reader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from faextract.data.axes import parse_dims
from faextract.data.merge import group_by_variables, merge_groups, open_group
from faextract.data.selection import fold_expver, parse_select
from faextract.data.sources import (
    env_number,
    open_one,
    resolve_paths,
)
from faextract.data.standardize import is_periodic
from faextract.data.time import (
    calendar_of,
)

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
            opened.append((path, open_one(path)))
        groups = group_by_variables(opened, variables)
        parts = [
            open_group(members, names, levels, overrides, sort_time, time_chunk, chosen)
            for names, members in groups
        ]
        if len(parts) == 1:
            ds, axes, kept, files = parts[0]
        else:
            ds, axes, kept, files = merge_groups(parts, [members for _, members in groups])
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
