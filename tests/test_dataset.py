"""The streaming dataset: item layout, masks, sharding, determinism, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faextract.data.dataset import CubeSource, WindowDataset, make_loader
from faextract.data.normalize import normalize
from faextract.data.stats import compute_stats
from faextract.data.tiling import TileSpec


@pytest.fixture
def source(small_nc):
    return CubeSource(paths=(str(small_nc),))


@pytest.fixture
def stats(source):
    return compute_stats(source.open())


def test_items_are_normalized_windows_with_masks(source, stats):
    spec = TileSpec(window=8, tile=(8, 12), halo=2)
    ds = WindowDataset(source, stats, spec)
    batch = next(iter(ds))
    assert batch.x.shape == (1, 8, 3, 8, 12) and batch.x.dtype == torch.float32
    assert batch.mask.dtype == torch.bool and batch.step_valid.all()
    assert not torch.isnan(batch.x).any()
    assert (batch.x[~batch.mask] == 0).all()
    assert not batch.mask[0, :, :, :2].any(), "the northern halo of the first tile is padding"
    # values equal the normalized cube at the same indices
    cube = source.open()
    ref = normalize(cube.to_array().isel(time=slice(0, 8)), stats).values
    w = ds.tiler.windows[0]
    rows, cols = w.lat >= 0, w.lon >= 0
    got = batch.x[0].numpy()[:, :, rows][:, :, :, cols]
    want = np.nan_to_num(ref[:, :, w.lat[rows]][:, :, :, w.lon[cols]])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert 0.0 <= float(batch.phase.min()) and float(batch.phase.max()) < 1.0


@pytest.mark.parametrize("climatology", ["none", "monthly"])
def test_a_batch_equals_its_windows_one_by_one(tmp_path, climatology):
    """A batch (windows written straight into one array, the block normalized in place) holds
    exactly what each window read alone holds, and the normalized block equals the xarray
    normalize()."""
    from faextract.data.dataset import BlockReader
    from faextract.data.stats import StatsOptions
    from faextract.testing import synthetic_cube, write_netcdf

    write_netcdf(synthetic_cube(nt=370, nlat=12, nlon=24, seed=4), tmp_path / "year.nc")
    source = CubeSource(paths=(str(tmp_path / "year.nc"),))
    cube = source.open()
    stats = compute_stats(cube, StatsOptions(climatology=climatology))
    spec = TileSpec(window=8, stride=5, tile=(8, 12), halo=2)
    ds = WindowDataset(source, stats, spec)
    windows = ds.tiler.windows[:6]
    batch = BlockReader(cube, stats).window_batch(ds.tiler, windows)
    for j, w in enumerate(windows):
        single = BlockReader(cube, stats).window_batch(ds.tiler, [w])
        for key in ("x", "mask", "phase", "time", "lat", "index"):
            torch.testing.assert_close(
                getattr(batch, key)[j : j + 1], getattr(single, key), rtol=0, atol=0,
                equal_nan=True, msg=key,
            )
    block = BlockReader(cube, stats).read(3, 20)
    ref = normalize(cube.to_array().isel(time=slice(3, 20)), stats).values
    np.testing.assert_allclose(block, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_shards_that_cover_everything(source, stats, world):
    spec = TileSpec(window=6, tile=(6, 12))
    parts = [
        WindowDataset(
            source, stats, spec, rank=r, world_size=world, shuffle=True, seed=3
        ).rank_items()
        for r in range(world)
    ]
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat))
    assert sorted(flat) == list(range(len(WindowDataset(source, stats, spec).tiler.windows)))


def test_drop_uneven_gives_equal_lengths(source, stats):
    spec = TileSpec(window=7)
    lens = {
        len(WindowDataset(source, stats, spec, rank=r, world_size=4, drop_uneven=True))
        for r in range(4)
    }
    assert len(lens) == 1


def test_order_is_deterministic_per_seed_and_epoch(source, stats):
    spec = TileSpec(window=4)
    a = WindowDataset(source, stats, spec, shuffle=True, seed=7)
    b = WindowDataset(source, stats, spec, shuffle=True, seed=7)
    assert a.rank_items() == b.rank_items()
    b.set_epoch(1)
    assert a.rank_items() != b.rank_items()


@pytest.mark.slow
def test_dataloader_workers_cover_each_window_once(source, stats):
    spec = TileSpec(window=6, tile=(6, 12))
    ds = WindowDataset(source, stats, spec, batch_size=4)
    loader = make_loader(ds, num_workers=2)
    seen = []
    for batch in loader:
        assert batch.x.shape[1:] == (6, 3, 6, 12)  # (B, T, C, H, W)
        seen.extend(batch.index.tolist())
    assert sorted(seen) == list(range(len(ds.tiler.windows)))


def test_inf_in_a_window_is_a_clear_error(tmp_path, small_ds, stats):
    from faextract.errors import DataError
    from faextract.testing import write_netcdf

    bad = small_ds.copy(deep=True)
    bad["sp"].values[2, 1, 1] = -np.inf
    path = tmp_path / "inf.nc"
    write_netcdf(bad, path)
    ds = WindowDataset(CubeSource(paths=(str(path),)), stats, TileSpec(window=4))
    with pytest.raises(DataError, match="'sp' has infinite values"):
        next(iter(ds))


@pytest.mark.slow
def test_reader_processes_end_with_a_killed_parent(tmp_path):
    """``kill -9`` of a job leaves no DataLoader worker behind (forkserver workers are not
    children of the job, so they need their own watch)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from torch.utils.data import IterableDataset\n"
        "from faextract.data.dataset import make_loader\n"
        "class Sleepy(IterableDataset):\n"
        "    def __iter__(self):\n"
        "        print('worker', os.getpid(), flush=True)\n"
        "        while True:\n"
        "            time.sleep(0.1)\n"
        "            yield 0\n"
        "if __name__ == '__main__':\n"
        "    for _ in make_loader(Sleepy(), num_workers=1):\n"
        "        time.sleep(0.2)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("worker"), line
    worker = int(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{worker}/stat") as fh:  # a zombie waiting for its reaper is gone too
            if fh.read().split()[2] == "Z":
                return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its parent by 10 s")
