"""Cutting a variable into the codec's blocks, and preparing each for the network.

A block is ``time`` steps (8) of a spatial tile (``tile`` x ``tile`` cells, 256, or the whole
grid when smaller); tiles and the last block in time take what is left, so any grid and any
length is covered exactly once. Each block is made network-ready by :func:`prepare`:

- normalized by its own offset and range over its valid points (stored with the block);
- missing points filled with the block's mean (0 after normalization), so no NaN reaches
  the network; the mask itself is stored losslessly elsewhere;
- padded to ``T % 4 == 0`` (repeating the last step) and ``H, W % 16 == 0`` (wrapping around in
  longitude when the tile is the whole periodic grid, reflecting otherwise).

A block whose valid points are all equal (a constant field, ice cover of 1) or that has none is
not a case for the network: :func:`prepare` says so, and the container stores the value.
:func:`restore` inverts the preparation for a reconstruction; ``restore(prepare(x).x) == x`` on
valid points up to float32 rounding of the normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockSpec:
    time: int = 8
    tile: int = 256
    time_multiple: int = 4
    space_multiple: int = 16


@dataclass(frozen=True)
class Block:
    """Steps ``[t0, t1)``, rows ``[y0, y1)``, columns ``[x0, x1)`` of a ``(T, H, W)`` variable."""

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int


def plan_blocks(shape: tuple[int, int, int], spec: BlockSpec = BlockSpec()) -> list[Block]:
    """Blocks covering ``(T, H, W)`` exactly once, time-major."""
    T, H, W = shape
    tile_h, tile_w = min(spec.tile, H), min(spec.tile, W)
    return [
        Block(t0, min(T, t0 + spec.time), y0, min(H, y0 + tile_h), x0, min(W, x0 + tile_w))
        for t0 in range(0, T, spec.time)
        for y0 in range(0, H, tile_h)
        for x0 in range(0, W, tile_w)
    ]


@dataclass
class Prepared:
    """A block ready for the network, and what :func:`restore` needs.

    kind: ``"data"``, ``"constant"`` (all valid points equal ``offset``) or ``"missing"``.
    x: ``(T', H', W')`` float32 normalized and padded (``"data"`` only); valid: the block's own
    ``(t, h, w)`` mask; offset, scale: ``value = offset + scale * x``.
    """

    kind: str
    x: np.ndarray | None
    valid: np.ndarray
    offset: float
    scale: float


def padded_shape(shape: tuple[int, int, int], spec: BlockSpec = BlockSpec()) -> tuple[int, int, int]:
    """The network's shape of a ``(t, h, w)`` block: ``t`` up to a multiple of 4, ``h`` and
    ``w`` of 16."""
    t, h, w = shape
    return (t + -t % spec.time_multiple, h + -h % spec.space_multiple,
            w + -w % spec.space_multiple)  # fmt: skip


def prepare(values: np.ndarray, periodic: bool = False, spec: BlockSpec = BlockSpec()) -> Prepared:
    """``values (t, h, w)`` (NaN = missing) -> :class:`Prepared`. ``periodic``: the block spans
    the whole grid of a global, periodic longitude axis (pad by wrapping around)."""
    valid = np.isfinite(values)
    if not valid.any():
        return Prepared("missing", None, valid, 0.0, 1.0)
    v = values[valid].astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return Prepared("constant", None, valid, lo, 1.0)
    offset, scale = float(v.mean()), hi - lo
    x = np.where(valid, (values.astype(np.float64) - offset) / scale, 0.0).astype(np.float32)
    t, h, w = x.shape
    pt, ph, pw = (n - m for n, m in zip(padded_shape(x.shape, spec), x.shape, strict=True))
    x = np.pad(x, ((0, pt), (0, 0), (0, 0)), mode="edge")
    x = np.pad(x, ((0, 0), (0, ph), (0, 0)), mode="reflect" if h > 1 else "edge")
    x = np.pad(x, ((0, 0), (0, 0), (0, pw)), mode="wrap" if periodic else ("reflect" if w > 1 else "edge"))
    return Prepared("data", x, valid, offset, scale)


def restore(x_hat: np.ndarray | None, prepared: Prepared) -> np.ndarray:
    """A reconstruction ``x_hat (T', H', W')`` (or None for a constant/missing block) back to
    the block's ``(t, h, w)`` float32 values, NaN where it was missing."""
    t, h, w = prepared.valid.shape
    if prepared.kind == "data":
        out = prepared.offset + prepared.scale * x_hat[:t, :h, :w].astype(np.float64)
    else:
        out = np.full((t, h, w), prepared.offset)
    return np.where(prepared.valid, out, np.nan).astype(np.float32)
