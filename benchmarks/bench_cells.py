"""ConvLSTM2D vs FAConvLSTM2D (full and each ablation): parameters, FLOPs, throughput, memory.

    python benchmarks/bench_cells.py [--quick] [--device all|cpu|cuda] [--rounds N]

Setting: filters=64, kernel 3, input B=4, T=12, 64x64, C=8; on CPU, and on CUDA
with bf16 autocast when a GPU is present. Targets: FAConvLSTM2D has >= 10x fewer parameters
and FLOPs and >= 3x the forward+backward throughput of ConvLSTM2D. Parameters are those the
recurrent path uses (``forward``); the embedding head used only by ``forward_features`` is
listed separately. FLOPs count convolutions and matrix products (torch.utils.flop_counter).
Forward+backward feeds a fixed random gradient to the layer's output (no loss function, whose
own passes over the output would dilute the comparison of the cells). On CPU every cell runs
in a fresh process, once per round, and each time is the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import _env  # noqa: F401  (before torch)
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    chosen_devices,
    cpu_step_peak_mb,
    cuda_peak,
    device_label,
    devices_arg,
    in_child,
    table,
    timeit,
)  # noqa: E402

from faextract.models import ConvLSTM2D, FAConvLSTM2D, kernels  # noqa: E402

ABLATIONS = ["factorized", "multiscale", "se", "peephole", "attention", "temporal_attention"]


def make(name: str, C: int, F: int):
    kw = dict(
        filters=F,
        kernel_size=3,
        padding="same",
        data_format="channels_first",
        return_sequences=True,
        in_channels=C,
    )
    if name == "ConvLSTM2D":
        return ConvLSTM2D(**kw)
    if name == "FAConvLSTM2D":
        return FAConvLSTM2D(**kw)
    return FAConvLSTM2D(**kw, **{name.removeprefix("FA no-"): False})


def count_flops(layer, x) -> int:
    """Convolution and matmul FLOPs of a forward pass, with the C kernels off (the counter
    sees only PyTorch operators, and the depthwise convolutions would otherwise vanish)."""
    with kernels.disabled(), FlopCounterMode(display=False) as fc, torch.no_grad():
        layer(x)
    return fc.get_total_flops()


def run(
    device: str, B: int, T: int, S: int, C: int, F: int, repeat: int, rounds: int = 1
) -> list[dict]:
    names = [
        "ConvLSTM2D",
        "FAConvLSTM2D",
        *[f"FA no-{a}" for a in ABLATIONS if a != "temporal_attention"],
    ]
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    sync = torch.cuda.synchronize if device == "cuda" else None
    x = torch.randn(B, T, C, S, S, device=device)
    rows = []
    for name in names:
        torch.manual_seed(0)
        layer = make(name, C, F).to(device)
        head = sum(
            p.numel() for n, p in layer.named_parameters() if n.startswith(("head.", "temporal."))
        )
        params = sum(p.numel() for p in layer.parameters()) - head

        def fwd(layer=layer):
            with torch.no_grad(), amp:
                layer(x)

        grad = torch.randn(B, T, F, S, S, device=device)

        def fwd_bwd(layer=layer, grad=grad):
            with amp:
                y = layer(x)
            y.backward(grad.to(y.dtype))

        flops = count_flops(layer, x)
        if device == "cuda":
            t_f = timeit(fwd, repeat=repeat, sync=sync)
            t_fb = timeit(fwd_bwd, repeat=repeat, sync=sync)
            mem = cuda_peak(fwd_bwd)
        else:
            t_f = t_fb = mem = None  # measured below, in rounds
        rows.append(dict(name=name, params=params, head=head, flops=flops, t_f=t_f, t_fb=t_fb,
                         mem=mem))  # fmt: skip
    if device == "cpu":
        # A fresh process per cell (its memory high-water mark, and timings that an earlier
        # cell's large heap cannot slow down), every cell once per round, the median over
        # rounds: a machine whose speed drifts over minutes then moves all cells alike.
        runs = {r["name"]: [] for r in rows}
        for _ in range(rounds):
            for name in runs:
                argv = [__file__, "--child", name, *map(str, (B, T, S, C, F, repeat))]
                runs[name].append(in_child(argv))
        for r in rows:
            res = runs[r["name"]]
            r["t_f"] = statistics.median(x["fwd"] for x in res)
            r["t_fb"] = statistics.median(x["fwd_bwd"] for x in res)
            r["mem"] = res[0]["mb"]
    for r in rows:
        r["fwd"], r["fwdbwd"] = B * T / r["t_f"], B * T / r["t_fb"]
    base = rows[0]
    out = []
    for r in rows:
        out.append(
            {
                "cell": r["name"],
                "params": f"{r['params']:,}",
                "params ratio": f"{base['params'] / r['params']:.1f}x fewer",
                "GFLOPs": f"{r['flops'] / 1e9:.2f}",
                "FLOPs ratio": f"{base['flops'] / max(r['flops'], 1):.1f}x fewer",
                "fwd frames/s": f"{r['fwd']:.1f}",
                "fwd+bwd frames/s": f"{r['fwdbwd']:.1f}",
                "fwd+bwd speedup": f"{r['fwdbwd'] / base['fwdbwd']:.2f}x",
                "peak MB": f"{r['mem']:.0f}",
            }
        )
    return out


def child(name: str, B: int, T: int, S: int, C: int, F: int, repeat: int) -> None:
    """Peak memory of the first fwd+bwd, then median times of fwd and fwd+bwd."""
    import json

    torch.manual_seed(0)
    layer = make(name, C, F)
    x = torch.randn(B, T, C, S, S)
    grad = torch.randn(B, T, F, S, S)

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        layer(x).backward(grad)

    mb = cpu_step_peak_mb(fwd_bwd)
    print(json.dumps({"mb": mb, "fwd": timeit(fwd, repeat=repeat),
                      "fwd_bwd": timeit(fwd_bwd, repeat=repeat)}))  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    devices_arg(ap)
    ap.add_argument("--rounds", type=int, default=3, help="CPU: rounds over all cells (median)")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], *map(int, args.child[1:]))
    B, T, S, C, F = (2, 6, 32, 8, 32) if args.quick else (4, 12, 64, 8, 64)
    cols = [
        "cell",
        "params",
        "params ratio",
        "GFLOPs",
        "FLOPs ratio",
        "fwd frames/s",
        "fwd+bwd frames/s",
        "fwd+bwd speedup",
        "peak MB",
    ]
    for dev in chosen_devices(args.device):
        rows = run(dev, B, T, S, C, F, repeat=3 if dev == "cpu" else 10, rounds=args.rounds)
        label = device_label(dev)
        print(
            table(
                rows,
                cols,
                f"Cells at filters={F}, kernel 3, B={B}, T={T}, {S}x{S}, C={C} ({label})",
            )
        )


if __name__ == "__main__":
    main()
