"""The tiling roundtrip contract and full coverage of the cube."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from faextract.data.tiling import Tiler, TileSpec, Untiler
from faextract.errors import ConfigError

CASES = list(
    itertools.product(
        [(9, 11, 13), (4, 24, 48)],  # (T, H, W): sizes that do not divide
        [None, (5, 6), (8, 8), (30, 60)],  # tile
        [0, 2],  # halo
        [(4, None, 0), (6, 2, 0), (6, None, 2)],  # (window, stride, warmup)
        ["pad", "shift"],
        [False, True],  # periodic lon
    )
)


@pytest.mark.parametrize("shape,tile,halo,time,edge,periodic", CASES)
def test_untile_of_tile_is_identity_bitwise(shape, tile, halo, time, edge, periodic, rng):
    window, stride, warmup = time
    if tile is not None and min(tile) <= 2 * halo:
        pytest.skip("tile smaller than its halo")
    spec = TileSpec(window=window, stride=stride, tile=tile, halo=halo, warmup=warmup, edge=edge)
    T, H, W = shape
    x = rng.standard_normal((T, 2, H, W)).astype(np.float32)
    x[:, 0, :3, :4] = np.nan  # a "land" patch
    tiler = Tiler(spec, shape, periodic=periodic)
    tiles = tiler.tile(x)
    assert tiles.shape[1:] == (window, 2, *tiler.tile_shape)
    y = tiler.untile(tiles)
    assert np.array_equal(x, y, equal_nan=True)


def test_every_cell_is_covered_and_padding_is_masked(rng):
    spec = TileSpec(window=5, tile=(7, 7), halo=1)
    tiler = Tiler(spec, (12, 10, 10))
    covered = np.zeros((12, 10, 10), dtype=int)
    for w in tiler.windows:
        t = w.time[w.time >= 0]
        covered[np.ix_(t, w.lat[w.lat >= 0], w.lon[w.lon >= 0])] += 1
    assert covered.min() >= 1
    x = np.ones((12, 1, 10, 10), dtype=np.float32)
    last = tiler.extract(x, tiler.windows[-1])
    assert np.isnan(last).any(), "the last window hangs over the edge and must be padded with NaN"


def test_periodic_longitude_wraps_but_latitude_does_not():
    spec = TileSpec(window=1, tile=(6, 6), halo=2)
    tiler = Tiler(spec, (1, 8, 8), periodic=True)
    first = tiler.windows[0]
    assert list(first.lon[:2]) == [6, 7], "lon halo wraps to the other side of the globe"
    assert list(first.lat[:2]) == [-1, -1], "lat halo is padding"


def test_untiler_time_blocks_assemble_the_whole(rng):
    spec = TileSpec(window=6, warmup=2, tile=(5, 5), halo=1)
    shape = (20, 9, 9)
    x = rng.standard_normal((20, 1, 9, 9)).astype(np.float32)
    tiler = Tiler(spec, shape)
    parts = []
    for t0 in range(0, 20, 8):
        acc = Untiler(tiler, channels=1, t0=t0, t1=min(t0 + 8, 20))
        for w in tiler.windows_in(t0, t0 + 8):
            acc.add(w, tiler.extract(x, w))
        parts.append(acc.result())
    assert np.array_equal(np.concatenate(parts), x)


def test_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="warmup"):
        TileSpec(window=4, warmup=4)
    with pytest.raises(ConfigError, match="twice the halo"):
        TileSpec(tile=(4, 4), halo=2)
    with pytest.raises(ConfigError, match="edge"):
        TileSpec(edge="drop")
