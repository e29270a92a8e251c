"""Parallel-scan minimal cells vs ConvLSTM2D and FAConvLSTM2D at matched parameter budgets.

    python benchmarks/bench_scan.py [--quick] [--device all|cpu|cuda] [--rounds N]

Training-step (forward + backward) throughput and peak memory for T in {12, 48, 192}, on CPU
and on CUDA when present. Widths are chosen so that every cell has about the parameters of a
ConvLSTM2D of width 32 with input width 32 (72 h^2: MinConvGRU is 18 h^2, MinConvLSTM 27 h^2).
Targets at T=48: MinConvGRU >= 3x ConvLSTM2D on CUDA and >= 1.5x on 2 CPU cores.
The minimal cells run their default solver for the device (sequential on CPU, chunked log-space
scan on CUDA); the "log-space" rows force the parallel scan to show why CPU does not use it.
On the CPU each cell runs in a fresh process once per round (every cell of a length in turn),
and each time is the median over rounds, so a machine whose speed drifts over minutes moves
all cells alike. Also: a small forecasting comparison on advection-diffusion fields (teacher-forced training,
then closed-loop rollout), RMSE per cell at matched parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import _env  # noqa: F401  (before torch)
import torch

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

from faextract.models import create_cell  # noqa: E402

BASE_WIDTH = 32


def n_params(m) -> int:
    """Parameters on the recurrent path (FAConvLSTM's embedding head is not used here)."""
    return sum(
        p.numel() for n, p in m.named_parameters() if not {"head", "temporal"} & set(n.split("."))
    )


def build(cell: str, width: int, **kw):
    return create_cell(cell, filters=width, kernel_size=3, padding="same", data_format="channels_first",
                       return_sequences=True, in_channels=width, **kw)  # fmt: skip


def matched_width(cell: str, budget: int, **kw) -> int:
    best = min(range(8, 257, 2), key=lambda w: abs(n_params(build(cell, w, **kw)) - budget))
    return best


def speed(device: str, Ts, B: int, S: int, repeat: int, rounds: int = 1) -> list[dict]:
    budget = n_params(build("convlstm", BASE_WIDTH))
    specs = [
        ("ConvLSTM2D", "convlstm", {}),
        ("FAConvLSTM2D", "faconvlstm", {}),
        ("MinConvGRU", "minconvgru", {}),
        ("MinConvLSTM", "minconvlstm", {}),
        ("MinConvGRU log-space", "minconvgru", {"scan": "parallel"}),
    ]
    widths = {label: matched_width(cell, budget, **kw) for label, cell, kw in specs}
    params = {label: n_params(build(cell, widths[label], **kw)) for label, cell, kw in specs}
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows = []
    for T in Ts:
        measured = {}
        if device == "cuda":
            for label, cell, kw in specs:
                torch.manual_seed(0)
                w = widths[label]
                layer = build(cell, w, **kw).to(device)
                x = torch.randn(B, T, w, S, S, device=device)
                grad = torch.randn(B, T, w, S, S, device=device)

                def step(layer=layer, x=x, grad=grad):
                    with amp:
                        y = layer(x)
                    y.backward(grad.to(y.dtype))

                measured[label] = (
                    timeit(step, repeat=repeat, warmup=1, sync=sync),
                    cuda_peak(step),
                )
        else:
            # A fresh process per cell and length, for memory and time alike: after a run
            # with a large peak (FAConvLSTM2D at T=192 holds ~10 GB) the heap of a shared
            # process made later runs several times slower.
            runs = {label: [] for label, _, _ in specs}
            for _ in range(rounds):
                for label, cell, kw in specs:
                    args = [label, cell, json.dumps(kw), widths[label], B, T, S, repeat]
                    runs[label].append(in_child([__file__, "--child", *map(str, args)]))
            for label, res in runs.items():
                measured[label] = (statistics.median(r["seconds"] for r in res), res[0]["mb"])
        base = None
        for label, _cell, _kw in specs:
            t, mem = measured[label]
            fps = B * T / t
            base = base or fps
            rows.append({"T": T, "cell": label, "width": widths[label], "params": f"{params[label]:,}",
                         "train frames/s": f"{fps:.1f}", "vs ConvLSTM2D": f"{fps / base:.2f}x",
                         "peak MB": f"{mem:.0f}"})  # fmt: skip
    return rows


def advection_diffusion(n: int, T: int, S: int, seed: int = 0) -> torch.Tensor:
    """``(n, T, 1, S, S)`` fields advected by a random constant velocity and diffused (periodic)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(S) * S
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    out = []
    for _ in range(n):
        u0 = torch.randn(S, S, generator=g)
        spec = torch.fft.fft2(u0) * torch.exp(-(kx**2 + ky**2) / 20)
        vx, vy = (torch.rand(2, generator=g) - 0.5) * 2
        frames = []
        for t in range(T):
            phase = torch.exp(
                -2j * math.pi * (kx * vx + ky * vy) * t / S - 0.002 * (kx**2 + ky**2) * t
            )
            frames.append(torch.fft.ifft2(spec * phase).real)
        f = torch.stack(frames)
        out.append((f / f.std())[:, None])
    return torch.stack(out)


class Forecaster(torch.nn.Module):
    """1x1 encoder -> residual cell -> 1x1 decoder predicting the next frame."""

    def __init__(self, cell: str, width: int):
        super().__init__()
        self.enc = torch.nn.Conv2d(1, width, 1)
        self.cell = build(cell, width)
        self.dec = torch.nn.Conv2d(width, 1, 1)

    def forward(self, x):  # (B, T, 1, S, S) -> next frames (B, T, 1, S, S)
        B, T = x.shape[:2]
        u = self.enc(x.flatten(0, 1)).unflatten(0, (B, T))
        u = u + self.cell(u)
        return x + self.dec(u.flatten(0, 1)).unflatten(0, (B, T))


def forecasting(quick: bool) -> list[dict]:
    S, T_in, T_out = (16, 8, 4) if quick else (24, 10, 6)
    data = advection_diffusion(24 if quick else 48, T_in + T_out, S)
    train, test = data[: len(data) * 3 // 4], data[len(data) * 3 // 4 :]
    budget = n_params(build("convlstm", 16))
    rows = []
    for label, cell in [
        ("ConvLSTM2D", "convlstm"),
        ("FAConvLSTM2D", "faconvlstm"),
        ("MinConvGRU", "minconvgru"),
        ("MinConvLSTM", "minconvlstm"),
    ]:
        torch.manual_seed(0)
        model = Forecaster(cell, matched_width(cell, budget))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(40 if quick else 150):
            idx = torch.randint(len(train), (8,))
            seq = train[idx]
            pred = model(seq[:, :-1])  # teacher forcing over all steps
            loss = (pred - seq[:, 1:]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # closed loop: feed predictions back
            seq = test[:, :T_in]
            for _ in range(T_out):
                nxt = model(seq)[:, -1:]
                seq = torch.cat([seq, nxt], dim=1)
            rmse = (seq[:, T_in:] - test[:, T_in:]).square().mean().sqrt().item()
            persist = (test[:, T_in - 1 : T_in] - test[:, T_in:]).square().mean().sqrt().item()
        rows.append({"cell": label, "params": f"{n_params(model):,}",
                     f"closed-loop RMSE ({T_out} steps)": f"{rmse:.3f}", "persistence RMSE": f"{persist:.3f}"})  # fmt: skip
    return rows


def child(label, cell, kw, width, B, T, S, repeat) -> None:
    """Peak memory of the first training step, then the median time of ``repeat`` more."""
    torch.manual_seed(0)
    layer = build(cell, int(width), **json.loads(kw))
    x = torch.randn(int(B), int(T), int(width), int(S), int(S))
    grad = torch.randn_like(x)  # a fixed upstream gradient: the layer's cost, no loss's

    def step():
        layer(x).backward(grad)

    mb = cpu_step_peak_mb(step)
    print(json.dumps({"mb": mb, "seconds": timeit(step, repeat=int(repeat), warmup=1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    devices_arg(ap)
    ap.add_argument("--rounds", type=int, default=3, help="CPU: rounds over all cells (median)")
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    Ts = [12, 48] if args.quick else [12, 48, 192]
    B, S = (2, 16) if args.quick else (4, 32)
    cols = ["T", "cell", "width", "params", "train frames/s", "vs ConvLSTM2D", "peak MB"]
    for dev in chosen_devices(args.device):
        label = device_label(dev)
        print(
            table(
                speed(dev, Ts, B, S, repeat=3, rounds=args.rounds),
                cols,
                f"Training step, B={B}, {S}x{S}, matched parameters ({label})",
            )
        )
    if args.device == "cuda":
        return  # the forecasting comparison is about accuracy and runs on the CPU
    rows = forecasting(args.quick)
    print(table(rows, list(rows[0]), "Advection-diffusion forecasting at matched parameters (CPU)"))


if __name__ == "__main__":
    main()
