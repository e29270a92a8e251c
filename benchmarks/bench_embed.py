"""End-to-end embedding throughput vs the model alone, and memory as the cube grows.

    python benchmarks/bench_embed.py [--quick]

One run prints: windows/s of ``faextract embed`` end to end (read, normalize, tile, model,
attention maps, untile, Zarr writes) vs the model alone on the same windows already in memory
(target >= 80%); and peak RSS for a cube 1x and 10x as long, each in a fresh process
(target < 20% growth).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import growth_table, in_child, peak_rss_mb, table  # noqa: E402


def make_cube(path: Path, nt: int) -> None:
    from faextract.testing import synthetic_cube, write_netcdf

    write_netcdf(
        synthetic_cube(nt=nt, nlat=24, nlon=48, variables=("sst", "t2m", "sp", "u10")), path
    )


def checkpoint() -> str:
    from faextract.paths import SAMPLE_CHECKPOINT

    return str(SAMPLE_CHECKPOINT)


def end_to_end(cube: Path, out: Path, **kw) -> tuple[float, int]:
    from faextract.embed import EmbedOptions, embed

    res = embed([str(cube)], checkpoint(), str(out), EmbedOptions(overwrite=True, **kw))
    return res.seconds, res.windows


def model_only(cube: Path, **kw) -> tuple[float, int]:
    """The same windows, prepared in memory first; time only the model calls."""
    from faextract.checkpoint import build_model, load_checkpoint, stats_from_dict
    from faextract.data import Tiler, TileSpec, open_cube
    from faextract.data.dataset import BlockReader

    ckpt = load_checkpoint(checkpoint())
    model = build_model(ckpt)
    c = open_cube(str(cube))
    tiles = ckpt["tiles"]
    k = model.cells[-1].attention_every
    keep = -(-tiles["window"] // k) * k
    warm = -(-(tiles["window"] // 2) // k) * k
    spec = TileSpec(window=warm + keep, stride=keep, warmup=warm, multiple=model.multiple)
    tiler = Tiler(spec, (c.shape[0], c.shape[2], c.shape[3]), c.periodic)
    reader = BlockReader(c, stats_from_dict(ckpt["stats"]))
    items = [reader.window_item(tiler, w) for w in tiler.windows]
    bs = kw.get("batch_size", 8)
    batches = [
        {k: torch.stack([it[k] for it in items[i : i + bs]]) for k in items[0]}
        for i in range(0, len(items), bs)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.encode(b["x"], b["mask"], b["phase"], b["time"] >= 0, need_weights=True)
    return time.perf_counter() - t0, len(items)


def child(cube: str, out: str) -> None:
    secs, n = end_to_end(Path(cube), Path(out))
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "windows": n, "seconds": secs}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    nt = 120 if args.quick else 1460  # 4 years: start-up costs amortize as in real runs
    with tempfile.TemporaryDirectory() as tmp:
        cube = Path(tmp) / "cube.nc"
        make_cube(cube, nt)
        t_e2e, n = end_to_end(cube, Path(tmp) / "e.zarr")
        t_model, n_model = model_only(cube)
        rows = [
            {"path": "model only (windows in memory)", "windows": n_model, "windows/s": f"{n_model / t_model:.2f}", "ratio": "1.00"},
            {"path": "faextract embed end to end", "windows": n, "windows/s": f"{n / t_e2e:.2f}",
             "ratio": f"{(n / t_e2e) / (n_model / t_model):.2f}"},
        ]  # fmt: skip
        print(
            table(
                rows,
                list(rows[0]),
                f"Embedding throughput, sample model, {nt} days of 24x48x4 (CPU {torch.get_num_threads()} threads)",
            )
        )
        results = []
        for factor in (1, 10):
            c = Path(tmp) / f"c{factor}.nc"
            make_cube(c, (nt // 4 if args.quick else 146) * factor)
            results.append(
                in_child([__file__, "--child", str(c), str(Path(tmp) / f"m{factor}.zarr")])
            )
        print(growth_table(results, "cube length", "Memory: a full embed, fresh process each"))


if __name__ == "__main__":
    main()
