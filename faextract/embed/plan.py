"""What an embed run computes, decided before anything is written: the options and their
checks, the input opened as the model was trained, compatibility with the checkpoint, the
window plan (warm-up + kept steps, aligned on attention steps), the time blocks, and the
facts (digest, layout, input fingerprint) that decide whether an existing store may be resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from faextract.checkpoint import Checkpoint
from faextract.data.axes import parse_dims
from faextract.data.boxes import box_mask
from faextract.data.cube import Cube, open_cube
from faextract.data.dataset import CubeSource
from faextract.data.perturb import Perturbation
from faextract.data.selection import parse_select
from faextract.data.sources import is_url
from faextract.data.tiling import Tiler, TileSpec
from faextract.data.time import canonical_calendar
from faextract.errors import FaextractError, MissingVariableError
from faextract.store import EmbeddingStore, StoreLayout


@dataclass
class EmbedOptions:
    """What ``faextract embed`` may be told; checked on creation (one-line errors)."""

    batch_size: int = 8
    device: str = "auto"
    bf16: bool = False
    compile: bool = False  # torch.compile the encoder's cells
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


def check_compatible(ckpt: Checkpoint, cube: Cube, source: str) -> None:
    """Checkpoint vs data: channels, grid resolution, calendar, periodicity."""
    want, have = list(ckpt.channels), list(cube.channels)
    missing = [c for c in want if c not in have]
    if missing:
        raise FaextractError(
            f"{source}: the checkpoint needs variable {missing[0]!r}, which the input lacks "
            f"(input has {', '.join(have)})"
        )
    g = ckpt.grid
    mine = cube.grid()
    for key, label in (("dlat", "latitude"), ("dlon", "longitude")):
        if not math.isclose(g[key], mine[key], rel_tol=1e-3, abs_tol=1e-6):
            raise FaextractError(
                f"{source}: {label} resolution {mine[key]:g} deg differs from the checkpoint's {g[key]:g} deg"
            )
    if canonical_calendar(g["calendar"]) != canonical_calendar(cube.calendar):
        raise FaextractError(
            f"{source}: calendar {cube.calendar!r} differs from the checkpoint's {g['calendar']!r}"
        )
    if bool(g["periodic"]) != bool(cube.periodic):
        what = "global (periodic)" if cube.periodic else "regional"
        raise FaextractError(
            f"{source}: the input grid is {what} but the checkpoint was trained on the other kind"
        )


def open_input(inputs, ckpt: Checkpoint, opts: EmbedOptions) -> tuple[CubeSource, Cube]:
    """The input cube (lazy: metadata only), opened as in training (axis names, time sorting,
    selection) unless the options say otherwise, checked against the checkpoint, channels in
    the checkpoint's order; and the source that reader processes reopen it from."""
    trained = ckpt.trained_data
    dims = parse_dims(opts.dims if opts.dims is not None else trained.get("dims"))
    sort_time = bool(opts.sort_time if opts.sort_time is not None else trained.get("sort_time"))
    select = parse_select(opts.select if opts.select is not None else trained.get("select"))
    try:
        cube = open_cube(
            inputs, ckpt.variables, levels=ckpt.levels, dims=dims, sort_time=sort_time, select=select
        )
    except MissingVariableError as err:
        raise FaextractError(
            f"{err.source}: the checkpoint needs variable {err.variable!r}, which the input "
            f"lacks (input has {', '.join(err.available)})"
        ) from None
    check_compatible(ckpt, cube, cube.source_label)
    check_queries(opts.queries, cube)
    if list(cube.channels) != list(ckpt.channels):
        cube = dataclasses.replace(cube, channels=tuple(ckpt.channels))
    source = CubeSource(
        paths=tuple(cube.sources),
        variables=tuple(ckpt.variables),
        levels=tuple(ckpt.levels) if ckpt.levels else None,
        dims=dims,
        sort_time=sort_time,
        select=select,
    )
    return source, cube


def window_spec(
    tiles: TileSpec,
    attention: tuple[int, int] | None,
    multiple: int,
    opts: EmbedOptions,
    history: int = 0,
) -> TileSpec:
    """Embedding windows: ``warmup`` steps whose outputs are dropped (default half the training
    window, at least ``history``: the steps back a model's lagged EOF components look), then
    ``keep`` kept steps (default the training window), both rounded up to whole attention
    periods so that attention steps (t % k == 0) line up across windows."""
    keep = opts.keep or tiles.window
    if opts.warmup is not None and opts.warmup < history:
        raise FaextractError(
            f"--warmup {opts.warmup} is shorter than the {history} steps back the model's "
            f"lagged EOF components look (model.eof_lag); use --warmup {history} or more"
        )
    warmup = opts.warmup if opts.warmup is not None else max(tiles.window // 2, history)
    if attention:
        k = attention[0]
        keep, warmup = _round_up(keep, k), _round_up(warmup, k)
    return TileSpec(
        window=warmup + keep,
        stride=keep,
        warmup=warmup,
        tile=opts.tile if opts.tile is not None else tiles.tile,
        halo=opts.halo if opts.halo is not None else tiles.halo,
        multiple=multiple,
        edge="pad",
    )


@dataclass
class EmbedPlan:
    """The windows, blocks and identity of one embed run.

    tiler: the windows (``spec``: warm-up + kept steps, spatial tiles and halo).
    block: time steps per block (= the store's time chunk); a block is computed from a fixed
        set of windows in a fixed batch layout, so its bytes never depend on the process.
    attention: ``(k, heads)`` of the model's attention maps, or None.
    digest: inputs + checkpoint (+ selection, perturbation); a store of another digest is
        another computation. compute: the arithmetic (C kernels, CUDA, bf16).
    """

    spec: TileSpec
    tiler: Tiler
    block: int
    attention: tuple[int, int] | None
    embedding_dim: int
    eof_components: int
    eof_grid: tuple[int, int] | None
    latent_channels: int | None
    digest: str
    compute: str
    eof_lag: tuple[int, int] = (0, 0)  # (lagged EOF components, steps back)
    fingerprint: dict = field(default_factory=dict)

    @property
    def nt(self) -> int:
        return self.tiler.shape[0]

    @property
    def nblocks(self) -> int:
        return -(-self.nt // self.block)

    def span(self, b: int) -> tuple[int, int]:
        """Time steps ``[t0, t1)`` of block ``b``."""
        return b * self.block, min(self.nt, (b + 1) * self.block)

    def windows(self, blocks) -> list[tuple[int, list[int]]]:
        """``(block, indices of its windows)`` for each of ``blocks``."""
        return [(b, [w.index for w in self.tiler.windows_in(*self.span(b))]) for b in blocks]

    def store_layout(self, cube: Cube, opts: EmbedOptions) -> StoreLayout:
        """The store's arrays and chunks for this plan."""
        return StoreLayout(
            time=cube.time,
            lat=cube.lat,
            lon=cube.lon,
            block=self.block,
            embedding_dim=self.embedding_dim,
            eof_components=self.eof_components,
            eof_grid=self.eof_grid,
            eof_lag=self.eof_lag,
            tile_grid=self.tiler.tile_grid,
            attention=self.attention,
            queries=dict(opts.queries),
            latent_channels=self.latent_channels,
        )

    def layout(self, opts: EmbedOptions) -> dict:
        """The options that decide a store's content; a resume must use the same ones."""
        spec = self.spec
        return {
            "batch_size": opts.batch_size,
            "compute": self.compute,
            "warmup": spec.warmup,
            "keep": spec.step,
            "block": self.block,
            "tile": list(spec.tile) if spec.tile else None,
            "halo": spec.halo,
            "latent": bool(opts.latent),
            "queries": {k: list(v) for k, v in sorted(opts.queries.items())},
        }


def make_plan(
    ckpt: Checkpoint, ckpt_sha: str, cube: Cube, model, opts: EmbedOptions, out: str, device
) -> EmbedPlan:
    spec = window_spec(ckpt.tiles, model.attention_layout, model.multiple, opts, model.eof_lag)
    nt, _, H, W = cube.shape
    tiler = Tiler(spec, (nt, H, W), cube.periodic)
    block = opts.block or _stored_block(out, opts)
    if block is None:
        block = _default_block(spec.step, tiler.tile_grid[0] * tiler.tile_grid[1], opts.batch_size)
    return EmbedPlan(
        spec=spec,
        tiler=tiler,
        block=_round_up(block, spec.step),
        attention=model.attention_layout,
        embedding_dim=ckpt.embedding_dim,
        eof_components=ckpt.eof_components,
        eof_grid=model.eof_grid if ckpt.eof_components else None,
        latent_channels=ckpt.filters if opts.latent else None,
        eof_lag=(model.eof_lag_components, model.eof_lag),
        digest=_inputs_digest(cube, ckpt_sha, opts.perturb),
        compute=_compute_path(device, opts),
        fingerprint=input_fingerprint(cube.sources),
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


def check_fingerprint(store: EmbeddingStore, now: dict) -> None:
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


def check_layout(store: EmbeddingStore, layout: dict) -> None:
    before = json.loads(store.attrs.get("faextract_layout", "{}"))
    for key, value in layout.items():
        if key in ("batch_size", "compute") and key not in before:
            continue  # stores from before these were recorded
        if before.get(key) != value:
            raise FaextractError(
                f"{store.path}: was started with {key}={before.get(key)!r}, now {value!r}; "
                "rerun with the same options to resume, or use --overwrite"
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


def _compute_path(device: torch.device, opts: EmbedOptions) -> str:
    """Which arithmetic computes the embeddings: the C kernels and PyTorch differ by ~1e-6,
    CUDA, compiled code and bf16 by more, so every shard and resumed run of a store must use the same."""
    from faextract.models import kernels

    if opts.compile:  # compiled code fuses operations: other rounding than eager
        return f"{device.type}+compiled{'+bf16' if opts.bf16 else ''}"
    if device.type == "cpu":
        return "cpu+kernels" if kernels.library() is not None else "cpu"
    return f"{device.type}{'+bf16' if opts.bf16 else ''}"
