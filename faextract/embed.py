"""Stream a cube through a trained encoder into the embeddings store.

Flow: open the cube (checked against the checkpoint: variables, levels, resolution, calendar,
periodicity; axis names and time sorting as in training) -> read each time block once and
normalize it with the checkpoint's statistics, ahead of the model in a thread or in DataLoader
worker processes (:mod:`faextract.embed_batches`) -> windows with a time warm-up
(outputs of the first ``warmup`` steps of each window are discarded, so the recurrent state
has settled; the very first window starts on padding) and a spatial halo -> the model, in
``torch.inference_mode``, batched, optionally in bf16 -> untile (halo blending) -> the Zarr
store (:mod:`faextract.store`), one time block at a time, by a writer thread so compute and
writes overlap.

Each time block is computed from a fixed set of windows in a fixed order and batch layout,
so a block's bytes do not depend on which process computes it, on ``--shard``, or on whether
the run was interrupted: a resumed or sharded run is bitwise identical to one uninterrupted
process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faextract import __version__
from faextract.checkpoint import build_model, load_checkpoint, sha256, stats_from_dict
from faextract.data.axes import parse_dims
from faextract.data.boxes import box_mask, lon_in_box
from faextract.data.cube import Cube, is_url, open_cube
from faextract.data.dataset import CubeSource
from faextract.data.perturb import Perturbation
from faextract.data.selection import parse_select
from faextract.data.tiling import Tiler, TileSpec, Untiler, Window
from faextract.embed_batches import BlockBatches, offer, prefetched
from faextract.errors import FaextractError, MissingVariableError
from faextract.locks import Lock
from faextract.models.faconvlstm import FAConvLSTM2D
from faextract.outputs import existing_output, is_embedding_store, remove_output
from faextract.signals import StopFlag
from faextract.store import (
    FORMAT_VERSION,
    REFERENCES,
    EmbeddingStore,
    create_template,
    history_line,
)

EARTH_RADIUS_KM = 6371.0


@dataclass
class EmbedOptions:
    """What ``faextract embed`` may be told; checked on creation (one-line errors)."""

    batch_size: int = 8
    device: str = "auto"
    bf16: bool = False
    latent: bool = False
    queries: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    zarr_format: int = 3
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    keep: int | None = None  # kept steps per window (default: the training window)
    warmup: int | None = None  # warm-up steps per window (default: half the training window)
    block: int | None = (
        None  # time steps per block / Zarr chunk (default: a multiple of keep near 64)
    )
    tile: tuple[int, int] | None = None  # override the checkpoint's spatial tile
    halo: int | None = None
    dims: str | dict | None = None  # axis names (default: those the model was trained with)
    select: str | dict | None = None  # other dims' values (default: as in training)
    workers: int = 0  # DataLoader worker processes reading ahead; 0 = a thread
    sort_time: bool | None = None  # sort unsorted times (default: as in training)
    perturb: Perturbation | None = None  # noise or dropped cells, for robustness checks

    def __post_init__(self):
        from faextract.config import check_device

        if self.batch_size < 1:
            raise FaextractError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.keep is not None and self.keep < 1:
            raise FaextractError(f"--keep must be >= 1, got {self.keep}")
        if self.warmup is not None and self.warmup < 0:
            raise FaextractError(f"--warmup must be >= 0, got {self.warmup}")
        if self.workers < 0:
            raise FaextractError(f"--workers must be >= 0, got {self.workers}")
        if self.zarr_format not in (2, 3):
            raise FaextractError(f"--zarr-format must be 2 or 3, got {self.zarr_format}")
        check_device(self.device, "--device")


@dataclass
class EmbedResult:
    path: str
    status: str  # "complete", "partial" (other shards still running) or "stopped"
    blocks_written: int
    blocks_total: int
    windows: int
    seconds: float
    bytes: int
    input_wait: float = 0.0  # seconds the model waited for the next block of input

    def reading_bound(self) -> bool:
        """Whether reading set the pace: a long run whose model waited most of the time."""
        return self.seconds > 30 and self.input_wait > 0.5 * self.seconds


class _Waits:
    """Iterates ``items``, adding up the seconds each ``next`` blocks (the consumer's wait)."""

    def __init__(self, items):
        self.items, self.seconds = items, 0.0

    def __iter__(self):
        it = iter(self.items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item


def parse_query(text: str) -> tuple[str, tuple[float, float, float, float]]:
    """``NAME=lat0:lat1,lon0:lon1`` -> (NAME, (lat0, lat1, lon0, lon1))."""
    name, sep, rest = text.partition("=")
    try:
        lat_part, lon_part = rest.split(",")
        lat0, lat1 = (float(v) for v in lat_part.split(":"))
        lon0, lon1 = (float(v) for v in lon_part.split(":"))
    except ValueError:
        raise FaextractError(
            f"--attention-query: expected NAME=lat0:lat1,lon0:lon1 like nino34=-5:5,190:240, got {text!r}"
        ) from None
    if not sep or not name.isidentifier():
        raise FaextractError(
            f"--attention-query: the name must be a plain identifier, got {name!r}"
        )
    if not all(np.isfinite([lat0, lat1, lon0, lon1])):
        raise FaextractError(f"--attention-query {name}: the bounds must be finite, got {text!r}")
    if not -90 <= min(lat0, lat1) <= max(lat0, lat1) <= 90:
        raise FaextractError(f"--attention-query {name}: latitudes must lie in [-90, 90]")
    return name, (min(lat0, lat1), max(lat0, lat1), lon0, lon1)


def check_queries(queries: dict, cube: Cube) -> None:
    """Every query region must hold at least one grid cell (else its map would be all NaN)."""
    for name, box in queries.items():
        if not box_mask(cube.lat, cube.lon, box).any():
            raise FaextractError(
                f"--attention-query {name}: the box lat {box[0]:g}..{box[1]:g}, lon "
                f"{box[2]:g}..{box[3]:g} holds no grid cell (the grid spans lat "
                f"{cube.lat.min():g}..{cube.lat.max():g}, lon {cube.lon.min():g}..{cube.lon.max():g})"
            )


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise FaextractError(f"--shard: expected I/N like 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise FaextractError(f"--shard: need 0 <= I < N, got {text!r}")
    return i, n


def check_compatible(ckpt: dict, cube: Cube, source: str) -> None:
    """Checkpoint vs data: channels, grid resolution, calendar, periodicity."""
    want, have = list(ckpt["channels"]), list(cube.channels)
    missing = [c for c in want if c not in have]
    if missing:
        raise FaextractError(
            f"{source}: the checkpoint needs variable {missing[0]!r}, which the input lacks "
            f"(input has {', '.join(have)})"
        )
    g = ckpt["grid"]
    mine = cube.grid()
    for key, label in (("dlat", "latitude"), ("dlon", "longitude")):
        if not math.isclose(g[key], mine[key], rel_tol=1e-3, abs_tol=1e-6):
            raise FaextractError(
                f"{source}: {label} resolution {mine[key]:g} deg differs from the checkpoint's {g[key]:g} deg"
            )
    cal = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}
    if cal.get(g["calendar"], g["calendar"]) != cal.get(cube.calendar, cube.calendar):
        raise FaextractError(
            f"{source}: calendar {cube.calendar!r} differs from the checkpoint's {g['calendar']!r}"
        )
    if bool(g["periodic"]) != bool(cube.periodic):
        what = "global (periodic)" if cube.periodic else "regional"
        raise FaextractError(
            f"{source}: the input grid is {what} but the checkpoint was trained on the other kind"
        )


def _inputs_digest(cube: Cube, ckpt_sha: str, perturb: Perturbation | None = None) -> str:
    facts = {
        "sources": [s if is_url(s) else os.path.abspath(s) for s in cube.sources],
        "shape": list(cube.shape),
        "channels": list(cube.channels),
        "start": str(cube.time.values[0]),
        "end": str(cube.time.values[-1]),
        "checkpoint": ckpt_sha,
    }
    if cube.select:  # (absent when empty, so stores made before --select keep their digest)
        facts["select"] = dict(sorted(cube.select.items()))
    if perturb is not None:  # likewise absent without --perturb
        facts["perturb"] = perturb.describe()
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def input_fingerprint(sources) -> dict[str, list[int]]:
    """Size and modification time of every local input (a Zarr store: of its files):
    resuming a store whose input changed in place would mix old and new data."""
    out = {}
    for src in sources:
        if is_url(src) or not os.path.exists(src):
            continue
        if os.path.isdir(src):
            size, newest, count = 0, 0, 0
            for root, _dirs, files in os.walk(src):
                for name in files:
                    st = os.stat(os.path.join(root, name))
                    size, newest, count = size + st.st_size, max(newest, st.st_mtime_ns), count + 1
            out[os.path.abspath(src)] = [size, newest, count]
        else:
            st = os.stat(src)
            out[os.path.abspath(src)] = [st.st_size, st.st_mtime_ns]
    return out


def _check_fingerprint(store: EmbeddingStore, now: dict) -> None:
    before = json.loads(store.attrs.get("faextract_input_fingerprint", "null") or "null")
    if before is None:
        return  # a store from before fingerprints
    for path, facts in now.items():
        if path in before and before[path] != facts:
            raise FaextractError(
                f"{store.path}: the input {path} changed since this store was started (size or "
                "modification time differ); finishing it would mix old and new data: use "
                "--overwrite to start again"
            )


def _cell_means(idx: np.ndarray, coord: np.ndarray, m: int, circular: bool = False) -> np.ndarray:
    """Mean coordinate of each run of ``m`` input cells (a latent cell); NaN for padding only.

    ``circular`` unwraps longitudes first (over the valid cells only: a NaN inside
    ``np.unwrap`` would turn every later value into NaN) so a cell across the dateline
    averages to the right place.
    """
    vals = np.where(idx >= 0, coord[np.maximum(idx, 0)], np.nan).astype(np.float64)
    ok = np.isfinite(vals)
    if circular and ok.any():
        vals[ok] = np.rad2deg(np.unwrap(np.deg2rad(vals[ok])))
    vals = vals.reshape(-1, m)
    n = np.isfinite(vals).sum(axis=1)
    return np.where(n > 0, np.nansum(vals, axis=1) / np.maximum(n, 1), np.nan)


def _latent_geo(
    tiler_lat: np.ndarray, tiler_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray, m: int
):
    """Centres (deg) of the latent cells of one tile; NaN where a cell covers only padding."""
    return _cell_means(tiler_lat, lat, m), _cell_means(tiler_lon, lon, m, circular=True)


class AttentionMaps:
    """Turns axial attention weights into maps on one tile's latent grid.

    The effective 2-D attention from query ``(y, x)`` to key ``(y', x')`` is
    ``E = col[x](y, y') * row[y'](x, x')`` (see :mod:`faextract.models.attention`). The maps are
    contractions of ``E`` computed without forming it (or any ``(h*w)^2`` array: a 1-degree
    global latent grid would need gigabytes):

    - attention received by key k: ``sum_q E[q, k]`` = ``sum_x (sum_y col[x](y, y')) row[y'](x, x')``;
    - mean attention distance of query q: ``sum_k E[q, k] d(q, k)``, with the great-circle
      distance ``d`` rebuilt for a few query rows at a time from per-row and per-column
      factors (haversine: ``a = A[y, y'] + B[y, y'] * S[x, x']``);
    - a query region's map: the mean over its cells q of ``E[q, :]``, times ``h*w`` (1 = uniform);
    - the reverse, how much each query q attends to the region: ``sum_{k in R} E[q, k]`` over
      the region's share of the grid (1 = uniform). Influence runs both ways: a region that
      drives another is attended *by* it (the driven region's future depends on it).

    Tensors live on the model's device, so on a GPU the maps are computed there and only the
    small ``(n, h, w)`` results travel to the host.
    """

    #: Entries of the distance block ``(rows, h, w, w)`` built at a time.
    BLOCK = 1 << 22
    #: Distance tables up to this many entries (64 MB) are built once and kept: the grid
    #: (e.g. 24 x 48 latent cells: 1.3 M) is the same for every batch.
    KEEP = 1 << 24

    def __init__(
        self,
        lat_c: np.ndarray,
        lon_c: np.ndarray,
        queries: dict,
        in_lat: np.ndarray,
        in_lon: np.ndarray,
        device: torch.device | str = "cpu",
    ):
        """``lat_c``/``lon_c``: latent cell centres (NaN for padding); ``in_lat``/``in_lon``:
        the tile's input-grid coordinates (NaN where padded), used to find the latent cells a
        query region overlaps."""
        h, w = lat_c.size, lon_c.size
        self.h, self.w = h, w
        self._kept: torch.Tensor | None = None
        phi = np.deg2rad(lat_c.astype(np.float64))
        lam = np.deg2rad(lon_c.astype(np.float64))
        A = np.sin((phi[None, :] - phi[:, None]) / 2) ** 2  # (y, y')
        B = np.cos(phi[:, None]) * np.cos(phi[None, :])
        S = np.sin((lam[None, :] - lam[:, None]) / 2) ** 2  # (x, x')
        # Pairs with a padded cell get a == NaN -> distance 0 (they carry no weight anyway).
        to = dict(device=device, dtype=torch.float32)
        self.A, self.B, self.S = (torch.as_tensor(v, **to) for v in (A, B, S))
        my, mx = in_lat.size // h, in_lon.size // w
        valid = (np.isfinite(lat_c)[:, None] & np.isfinite(lon_c)[None, :]).ravel()
        self.query_cells, self.query_regions = {}, {}
        for name, (lat0, lat1, lon0, lon1) in queries.items():
            in_lon_box = lon_in_box(in_lon, lon0, lon1)
            in_lat_box = (in_lat >= lat0) & (in_lat <= lat1)
            # A latent cell belongs to the query if any input cell under it lies in the box:
            # a region smaller than one latent cell still has a query.
            rows = in_lat_box.reshape(h, my).any(axis=1)
            cols = in_lon_box.reshape(w, mx).any(axis=1)
            cells = np.nonzero((rows[:, None] & cols[None, :]).ravel() & valid)[0]
            self.query_cells[name] = (
                torch.as_tensor(cells // w, device=device),
                torch.as_tensor(cells % w, device=device),
            )
            region = np.zeros(h * w, dtype=np.float32)
            region[cells] = 1.0
            self.query_regions[name] = torch.as_tensor(region.reshape(h, w), device=device)

    def _distance_rows(self, y0: int, y1: int) -> torch.Tensor:
        """Great-circle distance (km) from query rows ``y0:y1`` as ``(rows, y', x, x')``."""
        if self.h * self.h * self.w * self.w <= self.KEEP:
            if self._kept is None:
                self._kept = self._distances(0, self.h)
            return self._kept[y0:y1]
        return self._distances(y0, y1)

    def _distances(self, y0: int, y1: int) -> torch.Tensor:
        a = self.A[y0:y1, :, None, None] + self.B[y0:y1, :, None, None] * self.S[None, None]
        d = 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0, 1)))
        return torch.nan_to_num(d, nan=0.0)

    def __call__(self, row: torch.Tensor, col: torch.Tensor) -> dict[str, torch.Tensor]:
        """``row (n, h, w, w)``, ``col (n, w, h, h)`` (n = windows x steps x heads) -> maps
        ``(n, h, w)`` on the host, float32."""
        row, col = row.float(), col.float()
        n, h, w = row.shape[0], self.h, self.w
        out = {"attention_received": torch.einsum("nxk,nkxl->nkl", col.sum(dim=2), row)}
        distance = torch.empty(n, h, w, device=row.device)
        step = max(1, self.BLOCK // (h * w * w))
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            # R[n, y, x, y'] = sum_x' row[y'](x, x') d((y, x), (y', x'))
            r = torch.einsum("nkxl,ykxl->nyxk", row, self._distance_rows(y0, y1))
            distance[:, y0:y1] = torch.einsum("nxyk,nyxk->nyx", col[:, :, y0:y1], r)
        out["attention_distance"] = distance
        for name, (qy, qx) in self.query_cells.items():
            if qy.numel():
                # E[q, (y', x')] for each query cell q = (qy, qx): col[qx](qy, y') row[y'](qx, x')
                cq = col[:, qx, qy, :]  # (n, Q, h)
                rq = row[:, :, qx, :]  # (n, h, Q, w)
                m = torch.einsum("nqk,nkql->nkl", cq, rq) / qy.numel()
                out[f"attention_query_{name}"] = m * (h * w)
                # The other direction: the mass every query (y, x) puts on the region,
                # sum_{k in R} col[x](y, y') row[y'](x, x'), over the region's share (1 = uniform).
                region = self.query_regions[name]
                row_r = torch.einsum("nkxl,kl->nkx", row, region)  # (n, y', x)
                m_from = torch.einsum("nxyk,nkx->nyx", col, row_r)
                out[f"attention_from_{name}"] = m_from * (h * w / qy.numel())
        return {key: v.cpu() for key, v in out.items()}


def _upsample(t: torch.Tensor, m: int) -> np.ndarray:
    """``(..., h, w)`` -> ``(..., h*m, w*m)`` nearest (latent cells back onto the input grid)."""
    if m > 1:
        t = t.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)
    return t.float().numpy()


class _Writer(threading.Thread):
    """Writes finished blocks from a queue so the next block computes meanwhile.

    A write that fails ends the thread and keeps the error; the main thread sees it at its next
    :meth:`put` or at :meth:`finish` (never blocked on a full queue nobody drains).
    """

    def __init__(self, store: EmbeddingStore):
        super().__init__(daemon=True)
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.written = 0

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            try:
                self.store.write_block(*item)
                self.written += 1
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err
                return

    def _offer(self, item) -> bool:
        """Queue ``item`` unless the thread has ended; True if queued."""
        return offer(self.q, item, self.is_alive)

    def put(self, item):
        if self.error or not self._offer(item):
            raise self.error or RuntimeError("the block writer thread ended unexpectedly")

    def finish(self) -> BaseException | None:
        """Write what is queued, stop, and return the error of a failed write (if any)."""
        self._offer(None)
        self.join()
        return self.error


def embed(
    inputs,
    checkpoint: str,
    out: str,
    options: EmbedOptions | None = None,
    *,
    command: str = "faextract embed",
    progress=None,
) -> EmbedResult:
    """Embed ``inputs`` with ``checkpoint`` into the Zarr store ``out``; see the module docstring."""
    opts = options or EmbedOptions()
    t_start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    ckpt_sha = sha256(checkpoint)
    levels = ckpt.get("levels")
    # The files are opened as in training (axis names, time sorting) unless told otherwise.
    trained_data = (ckpt.get("config") or {}).get("data") or {}
    dims = parse_dims(opts.dims if opts.dims is not None else trained_data.get("dims"))
    sort_time = bool(
        opts.sort_time if opts.sort_time is not None else trained_data.get("sort_time")
    )
    select = parse_select(opts.select if opts.select is not None else trained_data.get("select"))
    try:
        cube = open_cube(  # lazy: metadata only
            inputs,
            ckpt["variables"],
            levels=levels,
            dims=dims,
            sort_time=sort_time,
            select=select,
        )
    except MissingVariableError as err:
        raise FaextractError(
            f"{err.source}: the checkpoint needs variable {err.variable!r}, which the input "
            f"lacks (input has {', '.join(err.available)})"
        ) from None
    check_compatible(ckpt, cube, cube.source_label)
    check_queries(opts.queries, cube)
    if list(cube.channels) != list(ckpt["channels"]):
        cube = dataclasses.replace(cube, channels=tuple(ckpt["channels"]))
    stats = stats_from_dict(ckpt["stats"])
    model = build_model(ckpt)
    device = _device(opts.device)
    model.to(device)

    fa_cell = model.cells[-1] if isinstance(model.cells[-1], FAConvLSTM2D) else None
    k = fa_cell.attention_every if fa_cell is not None and fa_cell.attention else None
    heads = fa_cell.attention_heads if k else 0
    tiles = ckpt["tiles"]
    keep = opts.keep or tiles["window"]
    warmup = opts.warmup if opts.warmup is not None else tiles["window"] // 2
    if k:  # align kept steps and warm-up on attention steps: attention times are t % k == 0
        keep, warmup = _round_up(keep, k), _round_up(warmup, k)
    tile = opts.tile if opts.tile is not None else (tuple(tiles["tile"]) if tiles["tile"] else None)
    spec = TileSpec(
        window=warmup + keep,
        stride=keep,
        warmup=warmup,
        tile=tile,
        halo=opts.halo if opts.halo is not None else tiles["halo"],
        multiple=model.multiple,
        edge="pad",
    )
    nt, _, H, W = cube.shape
    tiler = Tiler(spec, (nt, H, W), cube.periodic)
    block = opts.block or _stored_block(out, opts)
    if block is None:
        block = _default_block(keep, tiler.tile_grid[0] * tiler.tile_grid[1], opts.batch_size)
    block = _round_up(block, keep)
    nblocks = -(-nt // block)
    digest = _inputs_digest(cube, ckpt_sha, opts.perturb)
    compute = _compute_path(device, opts)
    fingerprint = input_fingerprint(cube.sources)

    present = existing_output(
        out, inputs=[*cube.sources, checkpoint], ours=is_embedding_store, what="embeddings store"
    )
    if present and (opts.overwrite or not is_embedding_store(Path(out))):
        remove_output(out)  # ours (replaced on request) or an empty directory
    elif present:
        existing = EmbeddingStore(out)
        if existing.attrs.get("faextract_inputs_digest") != digest:
            raise FaextractError(
                f"{out}: exists and was made from another checkpoint or input (use --overwrite to replace it)"
            )
        if existing.attrs.get("complete"):
            raise FaextractError(f"{out}: already complete (use --overwrite to recompute it)")
    attrs = {
        "Conventions": "CF-1.8",
        "title": "faextract embeddings",
        "institution": "",
        "source": f"faextract {__version__}; checkpoint sha256 {ckpt_sha}",
        "history": history_line(command),
        "references": REFERENCES,
        "comment": f"embeddings of {', '.join(os.path.basename(s) for s in cube.sources)} "
        f"with a {model.cell_name} encoder; channels {', '.join(cube.channels)}"
        + "".join(f"; {dim}={value}" for dim, value in cube.select.items()),
        "faextract_format_version": FORMAT_VERSION,
        "faextract_inputs_digest": digest,
        "faextract_checkpoint_sha256": ckpt_sha,
        "faextract_cell": model.cell_name,
        "faextract_channels": json.dumps(list(cube.channels)),
        "faextract_input_fingerprint": json.dumps(fingerprint, sort_keys=True),
        "faextract_perturb": opts.perturb.describe() if opts.perturb else "",
        "faextract_window": f"warmup {warmup} + keep {keep} steps; block {block} steps",
        "faextract_layout": json.dumps(_layout(spec, block, opts, compute), sort_keys=True),
    }
    created = create_template(
        out,
        time=cube.time,
        lat=cube.lat,
        lon=cube.lon,
        block=block,
        embedding_dim=ckpt["model"]["args"]["embedding_dim"],
        tile_grid=tiler.tile_grid,
        heads=heads,
        attention_every=k,
        queries=opts.queries,
        latent_channels=ckpt["model"]["args"]["filters"] if opts.latent else None,
        attrs=attrs,
        zarr_format=opts.zarr_format,
    )
    store = EmbeddingStore(out)
    if not created:
        if store.attrs.get("faextract_inputs_digest") != digest:
            raise FaextractError(
                f"{out}: exists and was made from another checkpoint or input (use --overwrite)"
            )
        _check_layout(store, _layout(spec, block, opts, compute))
        _check_fingerprint(store, fingerprint)
    # One process per shard of a store: a second one would redo the work and race the first.
    shard_i, shard_n = opts.shard
    with Lock(
        Path(out) / f".faextract-lock-{shard_i}-of-{shard_n}", f"shard {shard_i}/{shard_n} of {out}"
    ):
        if not created:
            store.append_history(history_line(command))
        done = store.done()
        todo = [b for b in range(nblocks) if b % shard_n == shard_i and not done[b]]

        writer = _Writer(store)
        writer.start()
        stopped = False
        n_windows = 0
        plan = [
            (b, [w.index for w in tiler.windows_in(b * block, min(nt, (b + 1) * block))])
            for b in todo
        ]
        task = progress.start("embedding", total=sum(len(w) for _, w in plan)) if progress else None
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
        attention_maps = _AttentionContext(cube, model.multiple, opts.queries, k or 1, device)
        source = CubeSource(
            paths=tuple(cube.sources),
            variables=tuple(ckpt["variables"]),
            levels=tuple(levels) if levels else None,
            dims=dims,
            sort_time=sort_time,
            select=select,
        )
        batches = BlockBatches(
            source,
            cube.channels,
            stats,
            tiler,
            plan,
            opts.batch_size,
            cube=cube,
            perturb=opts.perturb,
        )
        prefetch = prefetched(batches, workers=opts.workers, pin=device.type == "cuda")
        waits = _Waits(prefetch)
        try:
            with StopFlag() as stop, torch.inference_mode():
                for b, batches in waits:  # one time block and its batches
                    if stop.requested:
                        stopped = True
                        break
                    t0, t1 = b * block, min(nt, (b + 1) * block)
                    arrays = _block_arrays(t0, t1, tiler, ckpt)
                    untilers = _untilers(tiler, t0, t1, k, heads, opts, ckpt)
                    for idx, batch in batches:
                        group = [tiler.windows[i] for i in idx]
                        batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
                        with amp:
                            latent, z, attn = model.encode(
                                batch["x"],
                                batch["mask"],
                                batch["phase"],
                                batch["time"] >= 0,
                                need_weights=bool(k),
                            )
                        z = z.float().cpu().numpy()
                        if not np.isfinite(z).all():  # inputs are checked finite: the model failed
                            raise FaextractError(
                                f"{checkpoint}: the model produced non-finite embeddings in time block "
                                f"{b} (steps {t0}..{t1 - 1}) from finite input; the store is left "
                                "incomplete"
                            )
                        for j, w in enumerate(group):
                            _store_embedding(arrays["embedding"], z[j], w, tiler, t0, t1)
                            if opts.latent:
                                untilers["latent"].add(
                                    w, _upsample(latent[j].float().cpu(), model.multiple)
                                )
                        if k:
                            attention_maps.add(untilers, attn, group)
                        n_windows += len(group)
                        if task is not None:
                            progress.advance(task, len(group))
                    for name, acc in untilers.items():
                        arrays[name] = acc.result()
                    att_slice = slice(t0 // k, -(-t1 // k)) if k else None
                    writer.put((b, t0, t1, arrays, att_slice))
        finally:  # on any exit: stop reading, let the writer finish the blocks it holds
            prefetch.close()
            write_error = writer.finish()
        if write_error is not None:
            raise write_error
        if task is not None:
            progress.finish(task)
        complete = store.mark_complete_if_done()
        status = "complete" if complete else ("stopped" if stopped else "partial")
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(out) for f in fs)
        return EmbedResult(
            out,
            status,
            writer.written,
            nblocks,
            n_windows,
            time.perf_counter() - t_start,
            size,
            input_wait=waits.seconds,
        )


def _default_block(keep: int, tiles: int, batch_size: int) -> int:
    """Steps per block: near 64, a multiple of ``keep``, and holding a multiple of
    ``batch_size`` windows, so that every batch is full (a block is batched on its own)."""
    per_block = max(1, round(64 / keep))
    return keep * _round_up(per_block, batch_size // math.gcd(batch_size, tiles))


def _stored_block(out: str, opts: EmbedOptions) -> int | None:
    """The block size of a store being resumed (its default may depend on the batch size)."""
    if opts.overwrite or not os.path.isdir(out):
        return None
    try:
        return json.loads(EmbeddingStore(out).attrs.get("faextract_layout", "{}")).get("block")
    except Exception:  # noqa: BLE001 - not a store we made: the checks below name it
        return None


def _round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FaextractError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def _compute_path(device: torch.device, opts: EmbedOptions) -> str:
    """Which arithmetic computes the embeddings: the C kernels and PyTorch differ by ~1e-6,
    CUDA and bf16 by more, so every shard and resumed run of a store must use the same."""
    from faextract.models import kernels

    if device.type == "cpu":
        return "cpu+kernels" if kernels.library() is not None else "cpu"
    return f"{device.type}{'+bf16' if opts.bf16 else ''}"


def _layout(spec: TileSpec, block: int, opts: EmbedOptions, compute: str) -> dict:
    """The options that decide a store's content; a resume must use the same ones."""
    return {
        "batch_size": opts.batch_size,
        "compute": compute,
        "warmup": spec.warmup,
        "keep": spec.step,
        "block": block,
        "tile": list(spec.tile) if spec.tile else None,
        "halo": spec.halo,
        "latent": bool(opts.latent),
        "queries": {k: list(v) for k, v in sorted(opts.queries.items())},
    }


def _check_layout(store: EmbeddingStore, layout: dict) -> None:
    before = json.loads(store.attrs.get("faextract_layout", "{}"))
    for key, value in layout.items():
        if key in ("batch_size", "compute") and key not in before:
            continue  # stores from before these were recorded
        if before.get(key) != value:
            raise FaextractError(
                f"{store.path}: was started with {key}={before.get(key)!r}, now {value!r}; "
                "rerun with the same options to resume, or use --overwrite"
            )


def _block_arrays(t0, t1, tiler: Tiler, ckpt) -> dict:
    d = ckpt["model"]["args"]["embedding_dim"]
    ty, tx = tiler.tile_grid
    shape = (t1 - t0, d) if (ty, tx) == (1, 1) else (t1 - t0, ty, tx, d)
    return {"embedding": np.full(shape, np.nan, dtype=np.float32)}


def _untilers(tiler: Tiler, t0, t1, k, heads, opts, ckpt) -> dict[str, Untiler]:
    out = {}
    if opts.latent:
        out["latent"] = Untiler(tiler, ckpt["model"]["args"]["filters"], t0, t1)
    if k:
        a0, a1 = t0 // k, -(-t1 // k)
        for name in [
            "attention_received",
            "attention_distance",
            *[f"attention_query_{q}" for q in opts.queries],
            *[f"attention_from_{q}" for q in opts.queries],
        ]:
            out[name] = Untiler(tiler, heads, a0, a1)
    return out


def _store_embedding(
    target: np.ndarray, z: np.ndarray, w: Window, tiler: Tiler, t0: int, t1: int
) -> None:
    keep = tiler.time_weight(w) > 0
    for j, t in enumerate(w.time):
        if keep[j] and t0 <= t < t1:
            if target.ndim == 2:
                target[t - t0] = z[j]
            else:
                target[t - t0, w.tile[0], w.tile[1]] = z[j]


class _AttentionContext:
    """Adds the attention maps of a batch's windows (all their attention steps) to the block's
    untilers; one :class:`AttentionMaps` per spatial tile, built on first use."""

    def __init__(self, cube: Cube, multiple: int, queries: dict, k: int, device):
        self.builders: dict[tuple[int, int], AttentionMaps] = {}
        self.cube, self.device = cube, device
        self.m, self.queries, self.k = multiple, queries, k

    def _builder(self, w: Window) -> AttentionMaps:
        if w.tile not in self.builders:
            cube, m = self.cube, self.m
            lat_c, lon_c = _latent_geo(w.lat, w.lon, cube.lat, cube.lon, m)
            in_lat = np.where(w.lat >= 0, cube.lat[np.maximum(w.lat, 0)], np.nan)
            in_lon = np.where(w.lon >= 0, cube.lon[np.maximum(w.lon, 0)], np.nan)
            self.builders[w.tile] = AttentionMaps(
                lat_c, lon_c, self.queries, in_lat, in_lon, self.device
            )
        return self.builders[w.tile]

    def add(self, untilers: dict, attn, group: list[Window]) -> None:
        if not attn:
            return
        m, k = self.m, self.k
        steps = np.array([step for step, _ in attn])
        rows = torch.stack([wt.row for _, wt in attn], dim=1)  # (B, S, heads, h, w, w)
        cols = torch.stack([wt.col for _, wt in attn], dim=1)  # (B, S, heads, w, h, h)
        by_tile: dict[tuple[int, int], list[int]] = {}
        for j, w in enumerate(group):
            by_tile.setdefault(w.tile, []).append(j)
        for js in by_tile.values():
            sel = js if len(js) < len(group) else slice(None)
            maps = self._builder(group[js[0]])(rows[sel].flatten(0, 2), cols[sel].flatten(0, 2))
            for name, value in maps.items():
                up = _upsample(value.view(len(js), len(steps), -1, *value.shape[-2:]), m)
                for i, j in enumerate(js):
                    t = group[j].time[steps]
                    times = np.where((t >= 0) & (t % k == 0), t // k, -1)
                    untilers[name].add_steps(group[j], steps, up[i], times)
