"""Cut a ``(T, C, H, W)`` cube into model windows and stitch model outputs back.

A window is a time range times a spatial tile. The set of windows always covers the whole cube:
nothing is dropped at the edges. ``edge="pad"`` (default) extends the last window/tile past the
edge with NaN (invalid, so masked); ``edge="shift"`` moves it back inside the cube so that it
overlaps its neighbour more. Longitude wraps around (circular) only for periodic global grids;
latitude never does.

Overlap: each tile carries ``halo`` extra cells on every side, and each window ``warmup`` extra
leading steps so the recurrent state settles before outputs are kept. :class:`Untiler` blends
overlapping outputs with weights that are 1 in the tile core, taper linearly through the halo
and are 0 on warm-up steps.

Roundtrip contract: ``untile(tile(x)) == x`` exactly (bitwise, NaN where x is NaN) for the
identity op, for any tile size, halo and stride, including sizes that do not divide the grid.
Exactness comes from blending as a running weighted mean, ``m += w / W * (y - m)``: identical
contributions change nothing, where ``sum(w * y) / sum(w)`` would be off by rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faextract.errors import ConfigError

EDGE_POLICIES = ("pad", "shift")


@dataclass(frozen=True)
class TileSpec:
    """How to cut windows.

    window: time steps per window (including ``warmup``).
    stride: time steps between window starts (default: ``window - warmup``, no kept overlap).
    tile: ``(h, w)`` grid cells per spatial tile including halo; ``None`` = the whole grid.
    halo: cells of overlap on each side of a tile.
    warmup: leading steps of each window whose outputs are not kept.
    multiple: tile sizes are rounded up to a multiple of this (the model's downsampling factor).
    edge: ``"pad"`` or ``"shift"``.
    """

    window: int = 12
    stride: int | None = None
    tile: tuple[int, int] | None = None
    halo: int = 0
    warmup: int = 0
    multiple: int = 1
    edge: str = "pad"

    def __post_init__(self):
        if self.window < 1:
            raise ConfigError(f"tiles.window must be >= 1, got {self.window}")
        if not 0 <= self.warmup < self.window:
            raise ConfigError(
                f"tiles.warmup must be in [0, window={self.window}), got {self.warmup}"
            )
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"tiles.stride must be >= 1, got {self.stride}")
        if self.edge not in EDGE_POLICIES:
            raise ConfigError(f"tiles.edge must be one of {EDGE_POLICIES}, got {self.edge!r}")
        if self.halo < 0:
            raise ConfigError(f"tiles.halo must be >= 0, got {self.halo}")
        if self.tile is not None:
            h, w = self.tile
            if min(h, w) <= 2 * self.halo:
                raise ConfigError(
                    f"tiles.tile {self.tile} must exceed twice the halo ({2 * self.halo}) on each side"
                )

    @property
    def step(self) -> int:
        """Steps between window starts: ``stride``, or by default ``window - warmup``, i.e. the
        kept steps of each window (what ``faextract embed --keep`` sets)."""
        return self.stride if self.stride is not None else self.window - self.warmup


@dataclass(frozen=True)
class Window:
    """One model input: ``time``/``lat``/``lon`` index arrays into the cube (-1 = padding)."""

    index: int
    tindex: int
    tile: tuple[int, int]
    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray


def _axis_tiles(n: int, size: int | None, halo: int, multiple: int, edge: str, periodic: bool):
    """Index arrays of the tiles along one axis (-1 marks padding) and their weights."""
    if size is None or (size >= n and not periodic) or (periodic and size >= n and halo == 0):
        size, halo = n, 0
    size = int(math.ceil(size / multiple) * multiple)
    core = size - 2 * halo
    if core <= 0:
        raise ConfigError(f"tile size {size} leaves no core inside halo {halo}")
    count = max(1, math.ceil(n / core))
    origins = [k * core - halo for k in range(count)]
    if edge == "shift" and not periodic and n >= size:
        origins = [min(max(o, 0), n - size) for o in origins]
    tiles = []
    for o in origins:
        idx = np.arange(o, o + size)
        if periodic:
            idx = np.mod(idx, n)
        else:
            idx = np.where((idx >= 0) & (idx < n), idx, -1)
        tiles.append(idx)
    d = np.arange(size)
    weight = np.minimum(np.minimum(d + 1, size - d) / (halo + 1.0), 1.0)
    return tiles, weight


def _as_index(idx: np.ndarray):
    """A slice when ``idx`` is a contiguous increasing run, else the array itself."""
    if idx.size and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class Tiler:
    """All windows of a cube of ``shape = (T, H, W)`` under ``spec``."""

    def __init__(self, spec: TileSpec, shape: tuple[int, int, int], periodic: bool = False):
        self.spec = spec
        self.shape = tuple(int(s) for s in shape)
        T, H, W = self.shape
        h, w = spec.tile if spec.tile is not None else (None, None)
        self.lat_tiles, self.lat_weight = _axis_tiles(
            H, h, spec.halo, spec.multiple, spec.edge, False
        )
        self.lon_tiles, self.lon_weight = _axis_tiles(
            W, w, spec.halo, spec.multiple, spec.edge, periodic
        )
        self.time_starts = self._time_starts(T)
        self.windows = [
            Window(
                index=i,
                tindex=k,
                tile=(a, b),
                time=self._time_index(s, T),
                lat=self.lat_tiles[a],
                lon=self.lon_tiles[b],
            )
            for i, (k, s, a, b) in enumerate(
                (k, s, a, b)
                for k, s in enumerate(self.time_starts)
                for a in range(len(self.lat_tiles))
                for b in range(len(self.lon_tiles))
            )
        ]

    def _time_starts(self, T: int) -> list[int]:
        spec = self.spec
        first = -spec.warmup
        starts = [first]
        while starts[-1] + spec.window < T:
            starts.append(starts[-1] + spec.step)
        if spec.edge == "shift" and T >= spec.window:
            starts = sorted({min(max(s, 0), T - spec.window) for s in starts})
        return starts

    def _time_index(self, start: int, T: int) -> np.ndarray:
        idx = np.arange(start, start + self.spec.window)
        return np.where((idx >= 0) & (idx < T), idx, -1)

    @property
    def tile_grid(self) -> tuple[int, int]:
        return len(self.lat_tiles), len(self.lon_tiles)

    @property
    def tile_shape(self) -> tuple[int, int]:
        return len(self.lat_tiles[0]), len(self.lon_tiles[0])

    def time_weight(self, window: Window) -> np.ndarray:
        """1 on kept steps, 0 on warm-up steps (except before the very first window)."""
        w = np.ones(self.spec.window)
        head = window.time[: self.spec.warmup]
        w[: self.spec.warmup] = (head >= 0) if window.tindex == 0 else 0.0
        return w

    def windows_in(self, t0: int, t1: int) -> list[Window]:
        """Windows whose kept steps touch time range ``[t0, t1)``."""
        out = []
        for win in self.windows:
            kept = win.time[self.time_weight(win) > 0]
            kept = kept[kept >= 0]
            if kept.size and kept.min() < t1 and kept.max() >= t0:
                out.append(win)
        return out

    def extract(
        self, x: np.ndarray, window: Window, time_offset: int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Cut ``window`` from ``x (T, C, H, W)`` (NaN where padded).

        ``x`` may be a time block starting at cube step ``time_offset``; ``out`` (float32,
        the window's shape) receives the result instead of a new array.
        """
        t = window.time - time_offset
        tv = window.time >= 0
        if np.any(tv & ((t < 0) | (t >= x.shape[0]))):
            raise ValueError(
                f"window {window.index} needs steps {window.time[tv].min()}..{window.time[tv].max()}, "
                f"block holds {time_offset}..{time_offset + x.shape[0] - 1}"
            )
        ti = _as_index(np.where(tv, t, 0))
        yi = _as_index(np.where(window.lat >= 0, window.lat, 0))
        xi = _as_index(np.where(window.lon >= 0, window.lon, 0))
        # Slices where the indices are a contiguous run (the common case): views, one copy.
        cut = x[ti][:, :, yi][:, :, :, xi]
        if out is None:
            out = cut.astype(np.float32, copy=True)
        else:
            np.copyto(out, cut)
        out[~tv] = np.nan
        out[:, :, window.lat < 0] = np.nan
        out[:, :, :, window.lon < 0] = np.nan
        return out

    def tile(self, x: np.ndarray) -> np.ndarray:
        """All windows of ``x (T, C, H, W)`` stacked: ``(N, window, C, h, w)``."""
        return np.stack([self.extract(x, w) for w in self.windows])

    def untile(self, tiles: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`tile` for outputs on the input grid: ``(N, t, C, h, w) -> (T, C, H, W)``."""
        acc = Untiler(self, channels=tiles.shape[2])
        for w, y in zip(self.windows, tiles, strict=True):
            acc.add(w, y)
        return acc.result()


class Untiler:
    """Blend window outputs ``(window, C, h, w)`` onto ``(t1 - t0, C, H, W)``.

    Only contributions inside ``[t0, t1)`` are kept, so outputs can be assembled one time block
    at a time. Cells no window reached are NaN.
    """

    def __init__(self, tiler: Tiler, channels: int, t0: int = 0, t1: int | None = None):
        T, H, W = tiler.shape
        self.tiler = tiler
        self.t0, self.t1 = t0, (T if t1 is None else t1)
        n = self.t1 - self.t0
        self.mean = np.zeros((n, channels, H, W), dtype=np.float32)
        self.wsum = np.zeros((n, 1, H, W), dtype=np.float32)

    def add(self, window: Window, y: np.ndarray) -> None:
        """Blend ``y (window, C, h, w)``, the output of ``window``, into the block (rows keep
        the window's time weights: 0 on warm-up steps). Outputs that exist only on some steps
        of the window (attention maps) go through :meth:`add_steps`."""
        self.add_steps(window, np.arange(len(y)), y)

    def add_steps(
        self, window: Window, steps: np.ndarray, y: np.ndarray, times: np.ndarray | None = None
    ) -> None:
        """Blend ``y (len(steps), C, h, w)``, the outputs of ``window`` at ``steps``; ``times``
        (one per step) overrides where each lands on this untiler's time axis (-1: nowhere)."""
        steps = np.asarray(steps, dtype=np.int64)
        t = window.time[steps] if times is None else np.asarray(times, dtype=np.int64)
        tw = self.tiler.time_weight(window)[steps]
        use = (t >= self.t0) & (t < self.t1) & (tw > 0)
        if not use.any():
            return
        rows, cols = window.lat >= 0, window.lon >= 0
        yi, xi = window.lat[rows], window.lon[cols]
        sw = self.tiler.lat_weight[rows][:, None] * self.tiler.lon_weight[cols][None, :]
        ti = t[use] - self.t0
        if np.unique(ti).size != ti.size:
            raise ValueError(f"window {window.index}: several outputs for one time step")
        w = (tw[use][:, None, None] * sw[None]).astype(np.float32)  # (n, h, w)
        # Copies only where something is dropped (whole tiles, all steps: none).
        y = y if use.all() else y[use]
        if not rows.all():
            y = y[:, :, rows]
        if not cols.all():
            y = y[:, :, :, cols]
        if len(np.unique(xi)) == len(xi):
            self._update(ti, yi, xi, y, w)
        else:
            # Several tile cells land on one grid cell (a periodic tile wider than the globe):
            # apply them one at a time so each update sees the previous one.
            for c in range(len(xi)):
                self._update(ti, yi, xi[c : c + 1], y[..., c : c + 1], w[..., c : c + 1])

    def _update(self, ti, yi, xi, y: np.ndarray, w: np.ndarray) -> None:
        """Running weighted mean on cells ``(ti, :, yi, xi)``; ``ti`` are distinct steps."""
        tsel, ysel, xsel = _as_index(ti), _as_index(yi), _as_index(xi)
        if isinstance(ysel, slice) and isinstance(xsel, slice):
            idx_m = (tsel, slice(None), ysel, xsel)
            idx_w = (tsel, 0, ysel, xsel)
        else:
            tt, yy, xx = np.ix_(np.atleast_1d(ti), yi, xi)
            idx_m = (
                tt[:, None],
                np.arange(y.shape[1])[None, :, None, None],
                yy[:, None],
                xx[:, None],
            )
            idx_w = (tt, 0, yy, xx)
        prior = self.wsum[idx_w]
        if not prior.any():  # the first output to land here (no overlap): the mean is y
            self.mean[idx_m] = np.where(w[:, None] > 0, y, self.mean[idx_m])
            self.wsum[idx_w] = w
            return
        ws = prior + w
        frac = np.where(ws > 0, w / np.where(ws > 0, ws, 1.0), 0.0).astype(np.float32)
        m = self.mean[idx_m]
        self.mean[idx_m] = m + frac[:, None] * (y - m)
        self.wsum[idx_w] = ws

    def result(self) -> np.ndarray:
        out = self.mean.copy()
        out[np.broadcast_to(self.wsum == 0, out.shape)] = np.nan
        return out
