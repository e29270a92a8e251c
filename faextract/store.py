"""The embeddings store: a CF-described, restartable, shardable Zarr store.

Layout (``faextract_format_version = 1``):

- ``embedding (time, [tile_y, tile_x,] component)`` per-timestep subspace embeddings;
- ``attention_received (attention_time, head, lat, lon)``: how much attention each grid point
  receives, summed over all query points (1 = the average point);
- ``attention_distance (attention_time, head, lat, lon)``: mean great-circle distance (km)
  from each query point to where it attends;
- ``attention_query_<NAME> (attention_time, head, lat, lon)``: where the region NAME attends
  (1 = uniform), one per ``--attention-query``; ``attention_from_<NAME>``: how strongly each
  grid point attends to the region NAME (1 = uniform);
- ``latent (time, channel, lat, lon)`` with ``--latent``: the encoder's feature maps;
- ``block_done (block)``: 1 once a time block is written (the restart ledger).

Writing: :func:`create_template` writes metadata only (``compute=False``), into a temporary
directory renamed into place, so that of several processes racing to create it exactly one
wins and the others reuse it. Workers then write whole time blocks (chunk-aligned, never two
writers in one chunk) and mark ``block_done`` last, so a block is either recorded complete or
recomputed on the next run. The global attribute ``complete`` is set when every block is done.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import xarray as xr
import zarr

from faextract.errors import FaextractError

FORMAT_VERSION = 1
REFERENCES = (
    "Nji & Wang, FAConvLSTM, arXiv:2601.10914; Shi et al., ConvLSTM, arXiv:1506.04214; "
    "Horuz et al., minimal conv RNNs, arXiv:2508.03614"
)


def history_line(command: str) -> str:
    return f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}: {command}"


def _year_zero(units: str) -> bool:
    """A reference date in year 0 (``hour since 0000-01-01``: classic climatology files)."""
    ref = units.split(" since ", 1)[1].strip() if " since " in units else ""
    return ref.startswith(("0000", "0-", "00-", "000-"))


def _time_variable(time: xr.DataArray, values: np.ndarray, attrs: dict):
    """``(values, attrs, encoding)`` of a time coordinate holding ``values`` of ``time``.

    The store keeps the input's units and calendar. Times referenced to year 0 are written as
    the numbers themselves (xarray and cftime encode them only with ``has_year_zero``, which
    the CF calendars other than proleptic_gregorian lack), with ``units`` and ``calendar``
    attributes; :func:`open_embeddings` decodes them as the input's times were decoded.
    """
    units = str(time.encoding.get("units") or "days since 1970-01-01")
    calendar = str(time.encoding.get("calendar") or "standard")
    if _year_zero(units):
        import cftime

        from faextract.data.time import to_cftime

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cftime.CFWarning)  # year 0: outside CF, kept
            numbers = cftime.date2num(
                to_cftime(values, calendar), units, calendar=calendar, has_year_zero=True
            )
        attrs = dict(attrs, units=units, calendar=calendar)
        return np.asarray(numbers, dtype=np.float64), attrs, {"_FillValue": None}
    encoding = {"units": units, "calendar": calendar, "dtype": "float64", "_FillValue": None}
    return values, attrs, encoding


_LAT = {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"}
_LON = {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"}


@dataclass(frozen=True)
class StoreLayout:
    """The arrays of a store and their chunks.

    time: the cube's time coordinate (values, attributes, encoding and calendar are kept);
    lat, lon: the grid; block: time steps per chunk (a block of the restart ledger);
    tile_grid: spatial tiles (embeddings per tile when more than one);
    eof_components: the leading components that are the input's EOF principal components;
    eof_grid: the ``(rows, columns)`` the input was averaged onto for them, or None;
    eof_lag: ``(m, lag)``: the next m components are the first m of them ``lag`` steps back;
    attention: ``(k, heads)`` for maps on every k-th step, or None; queries: the named regions
    whose maps are stored; latent_channels: channels of ``latent``, or None.
    """

    time: xr.DataArray
    lat: np.ndarray
    lon: np.ndarray
    block: int
    embedding_dim: int
    eof_components: int = 0
    eof_grid: tuple[int, int] | None = None
    eof_lag: tuple[int, int] = (0, 0)
    tile_grid: tuple[int, int] = (1, 1)
    attention: tuple[int, int] | None = None
    queries: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    latent_channels: int | None = None

    @property
    def nblocks(self) -> int:
        return -(-self.time.size // self.block)


def create_template(path: str, layout: StoreLayout, attrs: dict, zarr_format: int = 3) -> bool:
    """Create the store's metadata if it does not exist. Returns True if this call created it."""
    if os.path.exists(path):
        return False
    coords, t_encoding = _coordinates(layout)
    data_vars, encoding = {}, {"time": t_encoding}
    for part in (_embedding_variable, _attention_variables, _latent_variable, _ledger):
        part(layout, coords, data_vars, encoding)
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs, complete=0))
    for name in ("lat", "lon", "component", "block", "tile_y", "tile_x", "head", "channel"):
        if name in ds.coords:
            encoding[name] = {"_FillValue": None}
    return _write_template(path, ds, encoding, zarr_format)


def _index(n: int, long_name: str) -> tuple:
    return np.arange(n, dtype=np.int32), {"long_name": long_name, "units": "1"}


def _coordinates(layout: StoreLayout) -> tuple[dict, dict]:
    time = layout.time
    t_values, t_attrs, t_encoding = _time_variable(
        time, time.values, {"standard_name": "time", "long_name": "time", "axis": "T"}
    )
    coords = {
        "time": ("time", t_values, t_attrs),
        "lat": ("lat", np.asarray(layout.lat, dtype=np.float64), _LAT),
        "lon": ("lon", np.asarray(layout.lon, dtype=np.float64), _LON),
        "component": ("component", *_index(layout.embedding_dim, "embedding component index")),
        "block": ("block", *_index(layout.nblocks, "time block index of the restart ledger")),
    }
    return coords, t_encoding


def _embedding_variable(layout: StoreLayout, coords, data_vars, encoding) -> None:
    import dask.array as da

    nt, d, tiles = layout.time.size, layout.embedding_dim, layout.tile_grid
    if tiles != (1, 1):
        coords["tile_y"] = ("tile_y", *_index(tiles[0], "spatial tile row"))
        coords["tile_x"] = ("tile_x", *_index(tiles[1], "spatial tile column"))
        dims, shape, chunks = ("time", "tile_y", "tile_x", "component"), (nt, *tiles, d), (layout.block, *tiles, d)
    else:
        dims, shape, chunks = ("time", "component"), (nt, d), (layout.block, d)
    comment = "the encoder's subspace head (FAConvLSTM: refined by seasonal temporal self-attention)"
    k, attrs = layout.eof_components, {}
    m, lag = layout.eof_lag
    if k:
        gh, gw = layout.eof_grid
        lagged = f"; components {k}-{k + m - 1}: components 0-{m - 1} {lag} time steps earlier"
        comment = (
            f"components 0-{k - 1}: the leading principal components (EOFs) of the normalized "
            f"input averaged onto {gh} x {gw} cells, weighted by sqrt(cos latitude), unit "
            f"variance over the training range{lagged if m else ''}; "
            f"components {k + m}-{d - 1}: {comment}"
        )
        attrs["eof_grid"] = np.array([gh, gw], dtype=np.int32)
        if m:
            attrs["eof_lag_components"], attrs["eof_lag"] = np.int32(m), np.int32(lag)
    data_vars["embedding"] = (
        dims,
        da.full(shape, np.nan, dtype=np.float32, chunks=chunks),
        {
            "long_name": "per-timestep subspace embedding",
            "units": "1",
            "comment": comment + "; dimensionless",
            "eof_components": np.int32(k),
            **attrs,
        },
    )
    encoding["embedding"] = {"chunks": chunks}


def _attention_variables(layout: StoreLayout, coords, data_vars, encoding) -> None:
    import dask.array as da

    if not layout.attention:
        return
    k, heads = layout.attention
    time = layout.time
    att_idx = np.arange(0, time.size, k)
    a_values, a_attrs, a_encoding = _time_variable(
        time,
        time.values[att_idx],
        {"standard_name": "time", "long_name": "time steps where axial attention ran"},
    )
    coords["attention_time"] = ("attention_time", a_values, a_attrs)
    coords["head"] = ("head", *_index(heads, "attention head index"))
    encoding["attention_time"] = a_encoding
    H, W = len(layout.lat), len(layout.lon)
    chunks = (layout.block // k, heads, H, W)
    maps = {
        "attention_received": ("attention received by each grid point, summed over query points", "1",
                               "1 = the average grid point; per attention head"),
        "attention_distance": ("mean great-circle distance from a query point to where it attends", "km",
                               "expectation of distance under the effective 2-D axial attention"),
    }  # fmt: skip
    for q, box in layout.queries.items():
        where = f"lat {box[0]}..{box[1]}, lon {box[2]}..{box[3]}"
        maps[f"attention_query_{q}"] = (
            f"where the region {q} attends",
            "1",
            f"mean attention from query points in {where}; 1 = uniform",
        )
        maps[f"attention_from_{q}"] = (
            f"how strongly each grid point attends to the region {q}",
            "1",
            f"attention each query point puts on {where}, over the region's share; 1 = uniform",
        )
    for name, (long_name, units, comment) in maps.items():
        data_vars[name] = (
            ("attention_time", "head", "lat", "lon"),
            da.full((att_idx.size, heads, H, W), np.nan, dtype=np.float32, chunks=chunks),
            {"long_name": long_name, "units": units, "comment": comment},
        )
        encoding[name] = {"chunks": chunks}


def _latent_variable(layout: StoreLayout, coords, data_vars, encoding) -> None:
    import dask.array as da

    F = layout.latent_channels
    if not F:
        return
    coords["channel"] = ("channel", *_index(F, "latent channel index"))
    H, W = len(layout.lat), len(layout.lon)
    chunks = (layout.block, F, H, W)
    data_vars["latent"] = (
        ("time", "channel", "lat", "lon"),
        da.full((layout.time.size, F, H, W), np.nan, dtype=np.float32, chunks=chunks),
        {
            "long_name": "encoder latent feature maps",
            "units": "1",
            "comment": "last recurrent layer's hidden state, upsampled to the input grid",
        },
    )
    encoding["latent"] = {"chunks": chunks}


def _ledger(layout: StoreLayout, coords, data_vars, encoding) -> None:
    import dask.array as da

    data_vars["block_done"] = (
        ("block",),
        da.zeros((layout.nblocks,), dtype=np.int8, chunks=1),
        {"long_name": "1 when this time block has been written", "units": "1"},
    )
    encoding["block_done"] = {"chunks": (1,), "_FillValue": None}


def _write_template(path: str, ds: xr.Dataset, encoding: dict, zarr_format: int) -> bool:
    """Metadata into a temporary directory renamed into place: of several processes racing to
    create the store exactly one wins (True); the others use theirs (False)."""
    _remove_stale_templates(path)
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        ds.to_zarr(
            tmp,
            mode="w-",
            compute=False,
            encoding=encoding,
            zarr_format=zarr_format,
            consolidated=False,
        )
        zarr.open_array(f"{tmp}/block_done", mode="r+")[:] = 0
        try:
            os.rename(tmp, path)
        except OSError:
            if os.path.exists(path):  # another process created it first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _remove_stale_templates(path: str) -> None:
    """Remove ``PATH.tmp-HOST-PID-*`` templates of processes of this host that died while
    creating them (a kill during template creation used to leave them forever)."""
    import glob

    from faextract.runtime.locks import _alive

    host = socket.gethostname()
    for tmp in glob.glob(glob.escape(f"{path}.tmp-{host}-") + "*"):
        pid = tmp[len(f"{path}.tmp-{host}-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


class EmbeddingStore:
    """Block-level access to an existing store (direct zarr writes, chunk-aligned)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.group = zarr.open_group(path, mode="r+")
        except Exception as err:  # noqa: BLE001
            raise FaextractError(
                f"{path}: exists but is not a faextract embeddings store ({err})"
            ) from err
        if "faextract_format_version" not in self.group.attrs:
            raise FaextractError(f"{path}: exists but is not a faextract embeddings store")

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def done(self) -> np.ndarray:
        return np.asarray(self.group["block_done"][:]) == 1

    def write_block(
        self, b: int, t0: int, t1: int, arrays: dict[str, np.ndarray], att_slice: slice | None
    ) -> None:
        """Write one time block's data, then record it done (in that order)."""
        for name, values in arrays.items():
            arr = self.group[name]
            if name.startswith("attention_"):
                arr[att_slice] = values
            else:
                arr[t0:t1] = values
        self.group["block_done"][b] = 1

    def mark_complete_if_done(self) -> bool:
        """Set ``complete`` and consolidate the metadata once every block is written."""
        if not self.done().all():
            return False
        if not dict(self.group.attrs).get("complete"):
            self.group.attrs["complete"] = 1
        import warnings

        with warnings.catch_warnings():
            # Zarr v3 has no consolidated metadata in the spec; zarr-python and xarray read it.
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.path)
        return True

    def append_history(self, line: str) -> None:
        prev = str(self.group.attrs.get("history", ""))
        self.group.attrs["history"] = f"{prev}\n{line}" if prev else line


def to_netcdf(path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Convert an embeddings store to NetCDF4 (for Panoply and CF checkers).

    Sets the encodings xarray would otherwise default wrongly for CF: no ``_FillValue`` on
    coordinates, float64 times with the store's units and calendar.
    """
    # Times travel as the stored numbers with their units and calendar (year-0 references
    # included, which xarray would not encode again).
    ds = open_embeddings(path, decode_times=False)
    encoding = {}
    for name in ds.coords:
        enc = {"_FillValue": None}
        if name in ("time", "attention_time"):
            enc.update(dtype="float64")
        encoding[name] = enc
    for name in ds.data_vars:
        encoding[name] = {"zlib": True, "complevel": 4}
    # Written beside the target and renamed: an interrupted export leaves no complete-looking file.
    out = os.fspath(out)
    tmp = f"{out}.partial-{uuid.uuid4().hex[:8]}"
    try:
        ds.to_netcdf(tmp, encoding=encoding, format="NETCDF4")
        if os.path.isdir(out):  # an empty directory (claim_output refuses any other)
            os.rmdir(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def open_embeddings(
    path: str | os.PathLike, allow_incomplete: bool = False, decode_times: bool = True
) -> xr.Dataset:
    """Open an embeddings store as an ``xr.Dataset`` (lazy). Incomplete stores are an error
    unless ``allow_incomplete`` (unwritten blocks read as NaN). Times are decoded as faextract
    decodes input times (reference year 0 included) unless ``decode_times`` is False."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FaextractError(f"{path}: no such embeddings store")
    try:
        ds = xr.open_zarr(path, consolidated=None, decode_times=False)
    except Exception as err:  # noqa: BLE001
        raise FaextractError(f"{path}: not a readable Zarr store ({err})") from err
    if decode_times:
        ds = _decoded_times(ds)
    if "faextract_format_version" not in ds.attrs:
        raise FaextractError(f"{path}: not a faextract embeddings store")
    if not ds.attrs.get("complete") and not allow_incomplete:
        done = int(ds["block_done"].sum())
        raise FaextractError(
            f"{path}: incomplete store ({done} of {ds.sizes['block']} time blocks written); "
            "rerun the same embed command to finish it"
        )
    return ds


def _decoded_times(ds: xr.Dataset) -> xr.Dataset:
    from faextract.data.time import decode_time

    for name in ("time", "attention_time"):
        if name not in ds.coords or "units" not in ds[name].attrs:
            continue
        attrs = dict(ds[name].attrs)
        units, calendar = attrs.pop("units"), attrs.pop("calendar", "standard")
        values = decode_time(ds[name].values, units, calendar)
        ds = ds.assign_coords({name: (name, values, attrs)})
        ds[name].encoding.update(units=units, calendar=calendar)
    return ds
