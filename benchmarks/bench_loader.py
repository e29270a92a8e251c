"""Streaming dataset throughput vs a plain zarr read, and its memory as the cube grows.

    python benchmarks/bench_loader.py [--quick]

One run prints: windows/s and MB/s of :class:`faextract.data.WindowDataset` over a Zarr store
vs a plain ``zarr`` read of the same bytes (the same time ranges, no normalization or tiling),
with 0, 1 and 2 DataLoader workers; and the peak RSS of a full pass over a store 1x and 10x as
long (each in a fresh process). Targets: >= 70% of the plain read throughput; peak
RSS grows < 20% for 10x the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import growth_table, in_child, peak_rss_mb, table  # noqa: E402


def make_store(path: Path, nt: int, nlat: int, nlon: int) -> None:
    from faextract.testing import synthetic_cube

    ds = synthetic_cube(nt=nt, nlat=nlat, nlon=nlon, variables=("sst", "t2m", "sp", "u10"))
    ds.chunk({"time": 32}).to_zarr(path, mode="w", consolidated=False)


def plain_read(path: Path, window: int) -> tuple[float, int]:
    """Read every window's time range of every variable with zarr directly: (seconds, bytes)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    names = ["sst", "t2m", "sp", "u10"]
    nt = g["sst"].shape[0]
    t0 = time.perf_counter()
    nbytes = 0
    for s in range(0, nt - window + 1, window):
        for n in names:
            a = g[n][s : s + window]
            nbytes += a.nbytes
    return time.perf_counter() - t0, nbytes


def dataset_pass(path: Path, window: int, workers: int) -> tuple[float, int, int]:
    from faextract.data import CubeSource, TileSpec, WindowDataset, compute_stats, make_loader

    src = CubeSource(paths=(str(path),))
    cube = src.open()
    stats = compute_stats(cube)
    ds = WindowDataset(src, stats, TileSpec(window=window, stride=window), batch_size=4, cube=cube)
    loader = make_loader(ds, num_workers=workers)
    # Steady state: the clock starts once the first batch is out (workers have started).
    n = nbytes = 0
    t0 = None
    for batch in loader:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += len(batch)
        nbytes += batch.x.numel() * 4
    return time.perf_counter() - t0, n, nbytes


def child(path: str, window: int) -> None:
    """Run one full pass in this process and print its peak RSS (used for the memory table)."""
    secs, n, _ = dataset_pass(Path(path), window, 0)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "windows": n, "seconds": secs}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))
    nt, nlat, nlon, window = (128, 48, 96, 8) if args.quick else (512, 96, 192, 12)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "cube.zarr"
        make_store(store, nt, nlat, nlon)
        t_plain, b_plain = plain_read(store, window)
        n_plain = nt // window
        rows = [{"reader": "plain zarr read", "workers": "-", "windows/s": f"{n_plain / t_plain:.1f}",
                 "MB/s": f"{b_plain / t_plain / 1e6:.1f}", "vs plain": "1.00"}]  # fmt: skip
        for w in (0, 1, 2):
            secs, n, nbytes = dataset_pass(store, window, w)
            rows.append({"reader": "WindowDataset", "workers": w, "windows/s": f"{n / secs:.1f}",
                         "MB/s": f"{nbytes / secs / 1e6:.1f}", "vs plain": f"{(n / secs) / (n_plain / t_plain):.2f}"})  # fmt: skip
        print(
            table(
                rows,
                list(rows[0]),
                f"Throughput: {nt} steps x 4 variables x {nlat}x{nlon}, window {window}",
            )
        )

        results = []
        for factor in (1, 10):
            long_store = Path(tmp) / f"cube_x{factor}.zarr"
            make_store(long_store, nt * factor // (1 if args.quick else 4), nlat // 2, nlon // 2)
            results.append(in_child([__file__, "--child", str(long_store), str(window)]))
        print(growth_table(results, "store length", "Memory: a full pass, fresh process each"))


if __name__ == "__main__":
    main()
