"""End-to-end embedding throughput vs the model alone, and memory as the cube grows.

    python benchmarks/bench_embed.py [--quick]

One run prints: windows/s of ``faextract embed`` end to end (read, normalize, tile, model,
attention maps, untile, Zarr writes) vs the model alone on the same windows already in memory
(target >= 80%), for two models: the bundled sample model on its tiny 24x48 grid (the worst
case: a 17 ms model step leaves little to hide data work behind) and a model of the default
configuration (``configs/default.yaml``: 2 layers, 32 filters, 4x downsampling) on a 96x192
grid of 5 variables, trained for one epoch here (only its cost matters). Then peak RSS for a cube
1x and 10x as long, each in a fresh process (target < 20% growth).
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
from _common import (  # noqa: E402
    chosen_devices,
    device_label,
    devices_arg,
    growth_table,
    in_child,
    peak_rss_mb,
    table,
)

SAMPLE_VARS = ("sst", "t2m", "sp", "u10")
DEFAULT_VARS = ("sst", "t2m", "sp", "u10", "sshf")


def make_cube(path: Path, nt: int, nlat: int = 24, nlon: int = 48, variables=SAMPLE_VARS) -> None:
    from faextract.testing import synthetic_cube, write_netcdf

    # Chunked 24 steps in time, like reanalysis archives: a file stored as one chunk per
    # variable would have to be decompressed whole, whatever reads it.
    write_netcdf(
        synthetic_cube(nt=nt, nlat=nlat, nlon=nlon, variables=variables), path, time_chunk=24
    )


def sample_checkpoint() -> str:
    from faextract.paths import SAMPLE_CHECKPOINT

    return str(SAMPLE_CHECKPOINT)


def default_config_checkpoint(tmp: Path) -> str:
    """A model of configs/default.yaml on a 96x192 grid, trained one epoch on 40 days."""
    from faextract.config import load_config
    from faextract.train import train

    make_cube(tmp / "train.nc", 40, 96, 192, DEFAULT_VARS)
    cfg = load_config(
        None, [f"data.paths=[{tmp / 'train.nc'}]", "train.epochs=1", "data.val_fraction=0"]
    )
    train(cfg, tmp / "run", plain_progress=True)
    return str(tmp / "run" / "last.pt")


def end_to_end(ckpt: str, cube: Path, out: Path, **kw) -> tuple[float, int]:
    from faextract.embed import EmbedOptions, embed

    res = embed([str(cube)], ckpt, str(out), EmbedOptions(overwrite=True, **kw))
    return res.seconds, res.windows


def model_only(ckpt_path: str, cube: Path, device: str = "cpu", **kw) -> tuple[float, int]:
    """The same windows, prepared in memory (on ``device``) first; time only the model calls."""
    from faextract.checkpoint import Checkpoint
    from faextract.data import Tiler, open_cube
    from faextract.data.dataset import BlockReader
    from faextract.embed import EmbedOptions, window_spec

    ckpt = Checkpoint.load(ckpt_path)
    model = ckpt.build_model().to(device)
    c = open_cube(str(cube))
    bs = kw.get("batch_size", 8)
    spec = window_spec(ckpt.tiles, model.attention_layout, model.multiple, EmbedOptions(batch_size=bs))
    tiler = Tiler(spec, (c.shape[0], c.shape[2], c.shape[3]), c.periodic)
    reader = BlockReader(c, ckpt.stats)
    windows = tiler.windows
    batches = [
        reader.window_batch(tiler, windows[i : i + bs]).to(device)
        for i in range(0, len(windows), bs)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.encode(b.x, b.mask, b.phase, b.step_valid, need_weights=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, len(windows)


def child(cube: str, out: str, device: str) -> None:
    secs, n = end_to_end(sample_checkpoint(), Path(cube), Path(out), device=device)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "windows": n, "seconds": secs}))


def throughput_rows(label: str, ckpt: str, cube: Path, out: Path, device: str) -> list[dict]:
    t_e2e, n = end_to_end(ckpt, cube, out, device=device)
    t_model, n_model = model_only(ckpt, cube, device)
    return [
        {"model": label, "path": "model only (windows in memory)", "windows": n_model,
         "windows/s": f"{n_model / t_model:.2f}", "ratio": "1.00"},
        {"model": label, "path": "faextract embed end to end", "windows": n,
         "windows/s": f"{n / t_e2e:.2f}", "ratio": f"{(n / t_e2e) / (n_model / t_model):.2f}"},
    ]  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    devices_arg(ap)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    nt = 120 if args.quick else 1460  # 4 years: start-up costs amortize as in real runs
    nt_big = 60 if args.quick else 365
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small, big = tmp / "cube.nc", tmp / "big.nc"
        make_cube(small, nt)
        make_cube(big, nt_big, 96, 192, DEFAULT_VARS)
        default_ckpt = default_config_checkpoint(tmp)
        memory_cubes = {factor: tmp / f"c{factor}.nc" for factor in (1, 10)}
        for factor, c in memory_cubes.items():  # 1 year: a full pipeline
            make_cube(c, (nt // 4 if args.quick else 365) * factor)
        for device in chosen_devices(args.device):
            # first-call costs (kernel builds, CUDA context), once per device
            end_to_end(sample_checkpoint(), small, tmp / "warm.zarr", device=device)
            rows = throughput_rows(
                f"sample, {nt} days of 24x48x{len(SAMPLE_VARS)}",
                sample_checkpoint(),
                small,
                tmp / "e.zarr",
                device,
            )
            rows += throughput_rows(
                f"default config, {nt_big} days of 96x192x{len(DEFAULT_VARS)}",
                default_ckpt, big, tmp / "d.zarr", device,
            )  # fmt: skip
            where = device_label(device, bf16=False)
            print(table(rows, list(rows[0]), f"Embedding throughput ({where})"))
            results = []
            for factor, c in memory_cubes.items():
                argv = [__file__, "--child", str(c), str(tmp / f"m{factor}.zarr"), device]
                results.append(in_child(argv))
            print(
                growth_table(
                    results, "cube length", f"Memory ({where}): a full embed, fresh process each"
                )
            )


if __name__ == "__main__":
    main()
