"""The compressed store: a Zarr group that xarray reads, with the byte streams inside.

Layout of ``X.zarr``::

    (root)            the input's coordinates and small variables, written by xarray, with
                      the input's global attributes; attrs ``faextract_compressed`` (format
                      version, bound, mode, predictor, block size, and with a learned
                      compressor its checkpoint's sha256: decoding needs that model)
    streams/<var>/<i> one uint8 array per block i of variable <var> (its sealed stream)
    streams/<var>     attrs: the variable's dims, shape, dtype, attributes and encoding, its
                      bound and block list; ``basis`` (the patch mode's shared basis)
    streams/<var>/<i> attrs ``crc32``, written after the stream: the ledger a restarted or
                      sharded run reads to skip the blocks done (with a shared basis, also
                      ``shared_basis``: whether the block was coded with it)

Plain uint8 arrays are used for the streams (Zarr v3's variable-length bytes type is marked
unstable and not portable across Zarr implementations). Variables of shape ``(time, y, x)``
are compressed (with other dimensions between time and the grid, levels or members, each
combination is a field of 2-D blocks of its own); every other variable is stored as xarray
writes it. ``decompress`` and
:func:`open_compressed` give back the input's variables, coordinates, attributes and
calendar; values within the bound, NaN exactly where the input had NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
import zarr

from faextract import __version__
from faextract.compress.blocks import BlockSpec, plan_blocks
from faextract.compress.codec import decode_block, encode_block, needs_shared_basis
from faextract.errors import DataError, FaextractError

#: Time steps per stored block. Longer blocks store less (the interpolation predicts further
#: in time, fixed costs spread thinner: 8 -> 64 steps gave 3-6% on the benchmark's cubes);
#: a ``--time`` range decodes whole blocks. The learned compressor is trained on 8-step blocks
#: and, being convolutional in time, codes any length.
STORE_BLOCK_STEPS = 64
FORMAT_VERSION = 2  # 2: compact blocks (FXB2); blocks of format 1 still decode
MARKER = "faextract_compressed"
DECOMPRESSED = "faextract_decompressed_from"


@dataclass
class CompressOptions:
    """The bound: exactly one of ``max_abs_error`` (absolute, data units), ``rel_error``
    (times each variable's valid range) or ``nrmse`` (patch RMSE, times the range)."""

    max_abs_error: float | None = None
    rel_error: float | None = None
    nrmse: float | None = None
    variables: tuple[str, ...] | None = None
    overwrite: bool = False
    block: BlockSpec = field(default_factory=lambda: BlockSpec(time=STORE_BLOCK_STEPS))
    #: A compressor checkpoint (``faextract train`` with ``job: compressor``); None: the
    #: block mean predicts (a plain error-bounded quantizer).
    checkpoint: str | None = None

    def __post_init__(self):
        given = {k: v for k, v in (("--max-abs-error", self.max_abs_error),
                                   ("--rel-error", self.rel_error), ("--nrmse", self.nrmse))
                 if v is not None}  # fmt: skip
        if len(given) != 1:
            raise FaextractError(
                "give exactly one error bound: --max-abs-error E, --rel-error R or --nrmse E"
                + (f" (got {', '.join(given)})" if given else "")
            )
        ((name, value),) = given.items()
        if not np.isfinite(value) or value <= 0:
            raise FaextractError(f"{name} must be a positive number, got {value:g}")
        if self.block.time < 1:
            raise FaextractError(f"--block-steps must be at least 1, got {self.block.time}")

    @property
    def mode(self) -> str:
        return "patches" if self.nrmse is not None else "pointwise"

    def bound_for(self, values_range: float) -> float:
        if self.max_abs_error is not None:
            return float(self.max_abs_error)
        relative = self.rel_error if self.rel_error is not None else self.nrmse
        return float(relative) * (values_range if values_range > 0 else 1.0)


@dataclass
class CompressResult:
    path: str
    variables: list[str]
    blocks_written: int  # by this run (a resumed or sharded run skips the blocks done)
    input_bytes: int  # float32 values + their mask, as the benchmarks count
    stored_bytes: int
    complete: bool = True  # False: other shards still have blocks to write (in OUT.partial)

    @property
    def ratio(self) -> float:
        return self.input_bytes / max(self.stored_bytes, 1)


def _compressible(ds: xr.Dataset, names) -> list[str]:
    chosen = list(names) if names else [v for v in ds.data_vars if ds[v].ndim >= 3]
    for v in chosen:
        if v not in ds.data_vars:
            raise DataError(f"no variable {v!r} in the input (it has {', '.join(map(str, ds.data_vars))})")
        if ds[v].ndim < 3:
            raise DataError(
                f"variable {v!r} has dims {ds[v].dims}: compress takes (time, [level, ...,] y, x) "
                "variables"
            )
    if not chosen:
        raise DataError("the input has no (time, [level, ...,] y, x) variable to compress")
    return chosen


def plan_fields(shape: tuple[int, ...], spec: BlockSpec) -> list[list[int]]:
    """The blocks of a ``(time, *other, y, x)`` variable: ``[t0, t1, y0, y1, x0, x1]`` for a
    (time, y, x) one; with other dimensions (levels, members), each of their combinations is a
    field of its own, and an entry starts with the field's flat index ``f``."""
    T, *mid, H, W = shape
    blocks = plan_blocks((T, H, W), spec)
    if not mid:
        return [[b.t0, b.t1, b.y0, b.y1, b.x0, b.x1] for b in blocks]
    return [[f, b.t0, b.t1, b.y0, b.y1, b.x0, b.x1] for f in range(int(np.prod(mid))) for b in blocks]


def _read(da: xr.DataArray, entry) -> np.ndarray:
    """One block ``(t, y, x)`` of ``da`` (an entry of :func:`plan_fields`)."""
    *field, t0, t1, y0, y1, x0, x1 = entry
    index = np.unravel_index(field[0], da.shape[1:-2]) if field else ()
    return np.asarray(da[(slice(t0, t1), *map(int, index), slice(y0, y1), slice(x0, x1))].values,
                      dtype=np.float32)  # fmt: skip


def compress(inputs, out: str, options: CompressOptions, progress=None,
             shard: tuple[int, int] | None = None) -> CompressResult:  # fmt: skip
    """Compress the (time, y, x) variables of ``inputs`` into the store ``out``.

    The store is written as ``OUT.partial`` and renamed when every block is in. A block's
    stream is recorded as done (its checksum in the array's attributes) only once written, so
    a killed run started again with the same options resumes where it stopped. ``shard=(i,
    n)``: this process writes blocks i, i + n, ... (a job array's tasks share one store; the
    one that finds every block done completes it).
    """
    from faextract.compress.codec import LearnedPredictor
    from faextract.data.sources import resolve_paths
    from faextract.outputs import claim_output, remove_output

    predictor = LearnedPredictor.load(options.checkpoint) if options.checkpoint else None
    paths = resolve_paths(inputs if isinstance(inputs, list | tuple) else [inputs])
    ds = _open(paths)
    try:
        names = _compressible(ds, options.variables)
        tmp = f"{out}.partial"
        if os.path.exists(out) and shard is not None and is_compressed_store(out):
            return _finished(out, names, ds)  # a late task of a completed job array
        if claim_output(out, inputs=paths, overwrite=options.overwrite, ours=is_compressed_store,
                        what="compressed store"):  # fmt: skip
            remove_output(out)
        if options.overwrite and shard is None:
            remove_output(tmp)
        plan = {
            "format": FORMAT_VERSION, "faextract": __version__, "mode": options.mode,
            "bound_option": _bound_option(options),
            "predictor": "learned" if predictor is not None else "mean",
            "model_sha256": predictor.sha256 if predictor is not None else None,
            "block": [options.block.time, options.block.tile], "variables": names,
            "inputs": [os.path.abspath(p) for p in paths],
        }  # fmt: skip
        with _lock(tmp):
            _prepare(ds, names, tmp, plan, options)
        written = _write_blocks(ds, names, tmp, options, predictor, progress, shard)
        with _lock(tmp):
            complete = os.path.exists(tmp) and _all_done(tmp, names)
            if complete:
                _drop_unused_bases(tmp, names)
                os.replace(tmp, out)
    finally:
        ds.close()
    if not complete:
        return CompressResult(tmp, names, written, _input_bytes(ds, names), _size(tmp), False)
    return CompressResult(out, names, written, _input_bytes(ds, names), _size(out))


def _bound_option(options: CompressOptions) -> dict:
    return {k: v for k, v in (("max_abs_error", options.max_abs_error),
                              ("rel_error", options.rel_error), ("nrmse", options.nrmse))
            if v is not None}  # fmt: skip


def _finished(out: str, names, ds) -> CompressResult:
    return CompressResult(out, names, 0, _input_bytes(ds, names), _size(out))


def _input_bytes(ds: xr.Dataset, names) -> int:
    n = sum(int(np.prod(ds[v].shape)) for v in names)
    return n * 4 + n // 8


def _lock(tmp: str):
    """A short critical section on ``OUT.partial`` (making it, completing it) among the tasks
    of a job array, waiting up to two minutes for the others."""
    from faextract.runtime.locks import Lock

    return Lock(f"{tmp}.lock", f"the compressed store {tmp}", wait=120.0)


def _prepare(ds, names, tmp, plan, options) -> None:
    """Make ``OUT.partial`` (the input's other variables and coordinates, each variable's
    metadata, bound and shared basis), or check that the one there is this same job."""
    if os.path.exists(tmp):
        from faextract.outputs import zarr_attrs

        there = json.loads((zarr_attrs(tmp) or {}).get(MARKER, "{}")).get("plan")
        if there != json.loads(json.dumps(plan)):
            raise FaextractError(
                f"{tmp}: an unfinished compression with other inputs or options; give the "
                "same ones to resume it, or --overwrite to start again"
            )
        return
    rest = ds.drop_vars(names)
    rest.attrs[MARKER] = json.dumps({**{k: plan[k] for k in ("format", "faextract", "mode",
                                     "predictor", "model_sha256", "block", "variables")},
                                     "plan": plan})  # fmt: skip
    stage = f"{tmp}.new"
    shutil.rmtree(stage, ignore_errors=True)
    rest.to_zarr(stage, mode="w", consolidated=False)
    root = zarr.open_group(stage, mode="r+")
    for v in names:
        da = ds[v]
        lo, hi = _valid_range(da)
        blocks = plan_fields(da.shape, options.block)
        group = root.require_group(f"streams/{v}")
        if options.mode == "patches":
            basis = basis_of([_read(da, e) for e in _spread(blocks, 16)])
            group.create_array("basis", shape=(basis.size * 4,), dtype="uint8")[:] = np.frombuffer(
                basis.astype("<f4").tobytes(), np.uint8
            )
        group.attrs.update({
            "dims": list(da.dims), "shape": list(da.shape), "dtype": str(da.dtype),
            "attrs": _jsonable(da.attrs), "encoding": _jsonable(_encoding(da)),
            "bound": options.bound_for(hi - lo if hi >= lo else 0.0),
            "periodic": _periodic(da),
            "blocks": blocks,
        })  # fmt: skip
    os.replace(stage, tmp)


def _valid_range(da: xr.DataArray, step: int = 64) -> tuple[float, float]:
    """Min and max over the finite values, reading ``step`` time steps at a time."""
    lo, hi = np.inf, -np.inf
    for t0 in range(0, da.shape[0], step):
        x = np.asarray(da[t0 : t0 + step].values, dtype=np.float32)
        x = x[np.isfinite(x)]
        if x.size:
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


def _write_blocks(ds, names, tmp, options, predictor, progress, shard) -> int:
    """This process's blocks that are not done yet; returns how many it wrote."""
    root = zarr.open_group(tmp, mode="r+")
    todo = []
    k = 0
    for v in names:
        group = root[f"streams/{v}"]
        for i, blk in enumerate(group.attrs["blocks"]):
            mine = shard is None or k % shard[1] == shard[0]
            k += 1
            if mine and not _done(group, i):
                todo.append((v, i, blk))
    task = progress.start("compressing", total=len(todo)) if progress else None
    basis = {}
    for v, i, entry in todo:
        group = root[f"streams/{v}"]
        if v not in basis:
            basis[v] = _basis(group)
        values = _read(ds[v], entry)
        x0, x1 = entry[-2:]
        periodic = group.attrs["periodic"] and x1 - x0 == ds[v].shape[-1]
        data = encode_block(values, group.attrs["bound"], options.mode, what=f"variable {v!r}",
                            predictor=predictor, basis=basis[v], periodic=periodic)  # fmt: skip
        arr = group.create_array(str(i), shape=(len(data),), dtype="uint8",
                                 chunks=(max(1, len(data)),), overwrite=True)  # fmt: skip
        arr[:] = np.frombuffer(data, dtype=np.uint8)
        ledger = {"crc32": zlib.crc32(data)}  # the ledger: written after the stream
        if basis[v] is not None:
            ledger["shared_basis"] = needs_shared_basis(data)
        arr.attrs.update(ledger)
        if task is not None:
            progress.advance(task, 1)
    if task is not None:
        progress.finish(task)
    return len(todo)


def _done(group, i: int) -> bool:
    return str(i) in group and "crc32" in group[str(i)].attrs


def _all_done(tmp: str, names) -> bool:
    root = zarr.open_group(tmp, mode="r")
    for v in names:
        group = root[f"streams/{v}"]
        if not all(_done(group, i) for i in range(len(group.attrs["blocks"]))):
            return False
    return True


def _drop_unused_bases(tmp: str, names) -> None:
    """Remove a variable's shared patch basis (16 KB) when none of its blocks was coded with
    it (the interpolation, say, won every block), as each block's ledger records."""
    root = zarr.open_group(tmp, mode="r+")
    for v in names:
        group = root[f"streams/{v}"]
        if "basis" not in group:
            continue
        n = len(group.attrs["blocks"])
        if not any(group[str(i)].attrs["shared_basis"] for i in range(n)):
            del group["basis"]


def _basis(group) -> np.ndarray | None:
    if "basis" not in group:
        return None
    return np.frombuffer(np.asarray(group["basis"][:]).tobytes(), "<f4").reshape(64, 64)


def shared_basis(values: np.ndarray, blocks, most: int = 16) -> np.ndarray:
    """The patch basis of a ``(time, y, x)`` variable cut into ``blocks``
    (:func:`~faextract.compress.blocks.plan_blocks`), from up to ``most`` of them (:func:`basis_of`)."""
    return basis_of([values[b.t0 : b.t1, b.y0 : b.y1, b.x0 : b.x1] for b in _spread(blocks, most)])


def _spread(items: list, most: int) -> list:
    """Up to ``most`` of ``items``, evenly spread."""
    return [items[i] for i in np.linspace(0, len(items) - 1, min(most, len(items))).astype(int)]


def basis_of(pieces) -> np.ndarray:
    """The patch basis of a variable: PCA of the 8x8 patches of some of its blocks, each minus
    its mean (the residual of the block-mean prediction); stored once per variable."""
    from faextract.compress.patches import fit_basis

    residuals = []
    for x in pieces:
        x = np.asarray(x, dtype=np.float32)
        ok = np.isfinite(x)
        residuals.append(np.where(ok, x - (x[ok].mean() if ok.any() else 0.0), 0.0))
    return fit_basis(residuals)


def _open(paths: list[str]) -> xr.Dataset:
    """The input as stored (times not decoded: they are written back as they were)."""
    try:
        if len(paths) > 1:
            return xr.open_mfdataset(paths, combine="by_coords", decode_times=False)
        if os.path.isdir(paths[0]):
            return xr.open_zarr(paths[0], decode_times=False, consolidated=None)
        return xr.open_dataset(paths[0], decode_times=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{paths[0]}: cannot be opened ({str(err).splitlines()[0]})") from None


def _periodic(da: xr.DataArray) -> bool:
    from faextract.data.standardize import is_periodic

    lon = da[da.dims[-1]].values if da.dims[-1] in da.coords else None
    return bool(lon is not None and np.issubdtype(np.asarray(lon).dtype, np.number) and is_periodic(np.asarray(lon, float)))


def _encoding(da: xr.DataArray) -> dict:
    keep = ("dtype", "_FillValue", "scale_factor", "add_offset", "units", "calendar")
    return {k: v for k, v in da.encoding.items() if k in keep}


def _output_encoding(encoding: dict, bound: float, mode: str) -> dict:
    """The input's encoding for a decompressed variable, less its integer packing where packing
    again could break the bound. Packing rounds to multiples of ``scale_factor``: values within
    less than half a step of the input's own packed values (a pointwise bound below 0.45 of a
    step) round back to exactly those, but a looser bound, or the patch mode, would move a value
    by up to half a step more than the bound; those are written as float32 instead."""
    if np.dtype(encoding.get("dtype", "float32")).kind not in "iu":
        return encoding
    step = abs(float(encoding.get("scale_factor", 1.0)))
    if mode == "pointwise" and bound < 0.45 * step:
        return encoding
    packing = ("dtype", "scale_factor", "add_offset", "_FillValue")
    return {k: v for k, v in encoding.items() if k not in packing}


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.dtype):
            v = str(v)
        out[str(k)] = v
    return out


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


def is_compressed_store(path) -> bool:
    from faextract.outputs import zarr_attrs

    return MARKER in (zarr_attrs(path) or {})


def open_compressed(path: str, checkpoint: str | None = None) -> xr.Dataset:
    """The compressed store as an xarray Dataset; each variable decodes block by block when it
    is computed (dask), so a slice decodes only the blocks it touches. A store written with a
    learned compressor needs that model: ``checkpoint``, or the bundled compressor when the
    store names it."""
    import dask
    import dask.array as dsa

    from faextract.outputs import zarr_attrs

    marker = (zarr_attrs(path) or {}).get(MARKER)
    if marker is None:
        raise DataError(f"{path}: not a faextract compressed store")
    meta = json.loads(marker)
    if meta.get("format", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: compressed with format {meta['format']}; upgrade faextract")
    predictor = _predictor_for(path, meta, checkpoint)
    ds = xr.open_zarr(path, consolidated=False, decode_times=False)
    root = zarr.open_group(path, mode="r")
    for v in meta["variables"]:
        g = root[f"streams/{v}"]
        info = dict(g.attrs)
        pieces: dict = {}
        basis = _basis(g)
        for i, entry in enumerate(info["blocks"]):
            *field, t0, t1, y0, y1, x0, x1 = entry
            delayed = dask.delayed(_decode_one)(g[str(i)], predictor, basis)
            pieces.setdefault(field[0] if field else 0, {})[(t0, y0, x0)] = dsa.from_delayed(
                delayed, shape=(t1 - t0, y1 - y0, x1 - x0), dtype=np.float32
            )
        fields = [_assemble(pieces[f]) for f in sorted(pieces)]
        shape = info["shape"]
        data = fields[0] if len(shape) == 3 else dsa.stack(fields, axis=1).reshape(shape)
        var = xr.Variable(info["dims"], data, attrs=info["attrs"])
        var.encoding.update(_output_encoding(info["encoding"], info["bound"], meta["mode"]))
        ds[v] = var
    ds = ds[[*meta["variables"], *(n for n in ds.data_vars if n not in meta["variables"])]]
    ds.attrs.pop(MARKER, None)
    return xr.decode_cf(ds)


def _assemble(pieces: dict):
    """One field's ``(t, y, x)`` dask array from its blocks keyed by ``(t0, y0, x0)``."""
    import dask.array as dsa

    ts, ys, xs = (sorted({k[i] for k in pieces}) for i in range(3))
    return dsa.block([[[pieces[(t, y, x)] for x in xs] for y in ys] for t in ts])


def _predictor_for(path: str, meta: dict, checkpoint: str | None):
    """The compressor that wrote the store (None for a model-free one); another model is refused
    by its sha256."""
    from faextract.compress.codec import LearnedPredictor
    from faextract.paths import SAMPLE_COMPRESSOR

    wanted = meta.get("model_sha256")
    if meta.get("predictor") != "learned":
        return None
    if checkpoint is None:
        from faextract.checkpoint import sha256

        if SAMPLE_COMPRESSOR.exists() and sha256(SAMPLE_COMPRESSOR) == wanted:
            checkpoint = str(SAMPLE_COMPRESSOR)
        else:
            raise DataError(
                f"{path}: compressed with a learned compressor (sha256 {str(wanted)[:12]}...): "
                "give its checkpoint with --checkpoint"
            )
    predictor = LearnedPredictor.load(checkpoint, "faextract decompress")
    if wanted and predictor.sha256 != wanted:
        raise DataError(
            f"{path}: compressed with the compressor of sha256 {wanted[:12]}..., and "
            f"{checkpoint} is another model (sha256 {predictor.sha256[:12]}...)"
        )
    return predictor


def _decode_one(arr, predictor, basis) -> np.ndarray:
    return decode_block(np.asarray(arr[:]).tobytes(), predictor, basis)


def _in_region(ds: xr.Dataset, ydim: str, xdim: str, region, path: str) -> xr.Dataset:
    from faextract.data.boxes import box_mask

    lat0, lat1, lon0, lon1 = region
    if ydim not in ds.coords or xdim not in ds.coords:
        raise DataError(f"{path}: --region needs latitude and longitude coordinates on {ydim}, {xdim}")
    lat, lon = ds[ydim].values.astype(float), ds[xdim].values.astype(float)
    inside = box_mask(lat, lon, (min(lat0, lat1), max(lat0, lat1), lon0, lon1))
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    if not rows.size or not cols.size:
        raise DataError(
            f"--region {lat0:g}:{lat1:g},{lon0:g}:{lon1:g} holds no grid cell (the grid spans "
            f"lat {lat.min():g}..{lat.max():g}, lon {lon.min():g}..{lon.max():g})"
        )
    return ds.isel({ydim: rows, xdim: cols})


def is_decompressed(path) -> bool:
    from faextract.outputs import global_attrs

    return DECOMPRESSED in (global_attrs(path) or {})


def decompress(path: str, out: str, *, overwrite: bool = False, time: slice | None = None,
               region: tuple[float, float, float, float] | None = None,
               checkpoint: str | None = None) -> str:  # fmt: skip
    """Write the decompressed dataset to ``out`` (``.nc``: NetCDF4, else Zarr); ``time``: the
    time steps to keep (by position); ``region``: ``(lat0, lat1, lon0, lon1)`` in degrees (any
    longitude convention). Only the blocks they touch are decoded."""
    from faextract.outputs import claim_output, remove_output

    ds = open_compressed(path, checkpoint)
    first = ds[next(iter(ds.data_vars))]
    if time is not None:
        ds = ds.isel({first.dims[0]: time})
    if region is not None:
        ds = _in_region(ds, first.dims[-2], first.dims[-1], region, path)
    if claim_output(out, inputs=[path], overwrite=overwrite, ours=is_decompressed,
                    what="decompressed dataset"):  # fmt: skip
        remove_output(out)
    ds.attrs[DECOMPRESSED] = str(path)
    tmp = f"{out}.partial"
    remove_output(tmp)
    try:
        if str(out).endswith(".nc"):
            ds.to_netcdf(tmp)
        else:
            ds.to_zarr(tmp, mode="w", consolidated=False)
    except BaseException:
        remove_output(tmp)  # nothing half-written is left behind
        raise
    os.replace(tmp, out)
    return out
