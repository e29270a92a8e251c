"""One command for a short GPU loan: every GPU measurement faextract reports, in one run.

    python benchmarks/gpu_suite.py              # on a GPU node
    python benchmarks/gpu_suite.py --smoke      # rehearsal on a CPU: tiny sizes, ~3 minutes
    python benchmarks/gpu_suite.py --parts tests,cells --budget-s 400   # what a short loan allows

The parts run in the order given (default: tests, cells, profile, scan, embed, compiled:
correctness first, the costly ``torch.compile`` rows last; on an H200 the tests took ~30 s,
the cells ~160 s and each compiled row ~80 s); a part is not started once ``--budget-s`` has
passed, and each measured row is also printed as it comes (``row: ...``), so a run cut off at
its time limit still leaves what it measured in its log.

Prints, each comparison measured in its own process (one process per row, so no row inherits
another's allocator state or compiled code):

- ``tests``: the GPU tests (``pytest -m gpu``);
- ``cells``: forward+backward of ConvLSTM2D (cuDNN) against FAConvLSTM2D eager (PyTorch's
  path, the default, and with the opt-in Triton kernels, ``FAEXTRACT_TRITON=1``), fp32 and
  bf16 autocast, at B=4 and B=32 on 64x64 and B=4 on 181x360 (T=12, C=8, 64 filters); ratios
  against ConvLSTM2D of the same dtype and size;
- ``profile``: where FAConvLSTM2D's eager step spends its time: the profiler's top kernels
  (fp32 and bf16, largest size; PyTorch's path, then the Triton kernels in fp32);
- ``scan``: the scan cells (``bench_scan.py``); ``embed``: embed end to end against the model
  alone (``bench_embed.py``), on the same device;
- ``compiled``: FAConvLSTM2D under ``torch.compile``, same sizes, against the ``cells`` part's
  ConvLSTM2D (measured again when ``cells`` did not run).

``--smoke`` runs the same code on the CPU at tiny sizes with one repeat (the fp32 "eager,
Triton" FAConvLSTM2D row through Triton's interpreter, so the kernels run end to end), so that the
suite is known to work before a GPU is spent on it; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SIZES = [(4, 64, 64), (32, 64, 64), (4, 181, 360)]  # (B, H, W)
SMOKE_SIZES = [(2, 16, 16)]
BASE = ("ConvLSTM2D", "eager")
VARIANTS = {  # part -> (cell, mode); "eager, Triton": FAEXTRACT_TRITON=1 (opt-in kernels)
    "cells": [BASE, ("FAConvLSTM2D", "eager"), ("FAConvLSTM2D", "eager, Triton")],
    "compiled": [("FAConvLSTM2D", "compiled")],
}
PARTS = ["tests", "cells", "profile", "scan", "embed", "compiled"]
ROW_TIMEOUT_S = 240  # one row's process (a torch.compile of 12 steps included)


def layer_step(cell: str, triton: bool, compiled: bool, dtype: str, B: int, H: int, W: int,
               device: str):
    """``(step, T)``: one forward+backward of a cell (T=12, C=8, 64 filters; smoke: T=4, 8
    filters) against a fixed upstream gradient. Sets ``FAEXTRACT_TRITON`` before the model is
    built: call it once per process."""
    import os

    os.environ["FAEXTRACT_TRITON"] = "1" if triton else "0"
    if triton and device == "cpu" and dtype == "fp32":
        # the rehearsal runs the Triton kernels through the interpreter (which has no bf16)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from faextract.models import ConvLSTM2D, FAConvLSTM2D

    T, C, F = (4, 4, 8) if device == "cpu" else (12, 8, 64)
    torch.manual_seed(0)
    kw = dict(filters=F, kernel_size=3, padding="same", data_format="channels_first",
              return_sequences=True, in_channels=C)  # fmt: skip
    layer = (ConvLSTM2D if cell == "ConvLSTM2D" else FAConvLSTM2D)(**kw).to(device)
    if compiled:
        layer = torch.compile(layer)
    x = torch.randn(B, T, C, H, W, device=device)
    grad = torch.randn(B, T, F, H, W, device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        with amp:
            y = layer(x)
        y.float().backward(grad)

    return step, T


def child(cell: str, mode: str, dtype: str, B: int, H: int, W: int, device: str, repeat: int):
    """Forward+backward frames/s of one row."""
    import torch
    from _common import timeit

    compiled = mode == "compiled"
    step, T = layer_step(cell, mode == "eager, Triton", compiled, dtype, B, H, W, device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    seconds = timeit(step, repeat=repeat, warmup=3 if compiled else 2, sync=sync)
    print(json.dumps({"frames_per_s": B * T / seconds}))


def profile(dtype: str, B: int, H: int, W: int, device: str, mode: str) -> None:
    """The profiler's top kernels of one FAConvLSTM2D forward+backward (after two warm-ups)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, T = layer_step("FAConvLSTM2D", mode == "Triton", False, dtype, B, H, W, device)
    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(f"FAConvLSTM2D eager ({mode}), {dtype}, B={B} {H}x{W}, T={T}: one forward+backward")
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


def cells_table(part: str, device: str, sizes, repeat: int, bases: dict) -> str:
    """One table of ``VARIANTS[part]``; ``bases`` holds ConvLSTM2D's rate per (size, dtype)."""
    from _common import device_label, in_child, table

    rows = []
    for B, H, W in sizes:
        for dtype in ("fp32", "bf16"):
            key = (B, H, W, dtype)
            variants = VARIANTS[part]
            if key not in bases and BASE not in variants:
                variants = [BASE, *variants]
            for cell, mode in variants:
                row = dict(size=f"B={B} {H}x{W}", dtype=dtype, cell=cell, mode=mode)
                argv = [__file__, "--child", cell, mode, dtype, str(B), str(H), str(W), device,
                        str(repeat)]  # fmt: skip
                try:
                    rate = in_child(argv, timeout=ROW_TIMEOUT_S)["frames_per_s"]
                except subprocess.CalledProcessError as err:  # report, do not lose the run
                    tail = (err.stderr or "").strip().splitlines()[-1:] or ["failed"]
                    row["note"] = tail[0][:60]
                except subprocess.TimeoutExpired:
                    row["note"] = f"timed out after {ROW_TIMEOUT_S}s"
                else:
                    if (cell, mode) == BASE:
                        bases[key] = rate
                    base = bases.get(key)
                    row["fwd+bwd frames/s"] = f"{rate:,.0f}"
                    row["vs ConvLSTM2D"] = f"{rate / base:.2f}x" if base else ""
                print("row:", json.dumps(row), flush=True)
                rows.append(row)
    cols = ["size", "dtype", "cell", "mode", "fwd+bwd frames/s", "vs ConvLSTM2D", "note"]
    return table(rows, cols, f"Cells forward+backward, one process per row ({device_label(device)})")


def run_script(args: list[str], timeout: int) -> str:
    """Another benchmark or pytest, its output kept (a failure is reported, not fatal)."""
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                             timeout=timeout, cwd=ROOT)  # fmt: skip
        text = out.stdout + (f"\n[exit {out.returncode}] {out.stderr[-2000:]}" if out.returncode else "")
    except subprocess.TimeoutExpired:
        text = f"[timed out after {timeout}s]"
    return f"\n$ python {' '.join(args)}   ({time.perf_counter() - t:.0f}s)\n{text.strip()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (a rehearsal)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, run in this order (default {','.join(PARTS)})")  # fmt: skip
    ap.add_argument("--sizes", help="cells sizes as BxHxW,... (default: "
                    + ",".join("x".join(map(str, s)) for s in SIZES) + ")")  # fmt: skip
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="start no further part once this many seconds have passed")  # fmt: skip
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    ap.add_argument("--profile-child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_child:
        c = args.profile_child
        return profile(c[0], *map(int, c[1:4]), c[4], c[5])
    if args.child:
        c = args.child
        return child(c[0], c[1], c[2], *map(int, c[3:6]), c[6], int(c[7]))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite: no CUDA device here; use --smoke to rehearse on the CPU")
    start = time.perf_counter()
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    quick = ["--quick"] if args.smoke else []
    sizes, repeat = (SMOKE_SIZES, 1) if args.smoke else (SIZES, 10)
    if args.sizes:
        try:
            sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
        except ValueError:
            sizes = []
        if not sizes or any(len(size) != 3 for size in sizes):
            ap.error(f"--sizes {args.sizes!r}: expected BxHxW[,BxHxW...], e.g. 4x181x360")
    bases: dict = {}
    for part in parts:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            print(f"\ngpu_suite: part {part} not started ({elapsed:.0f}s > --budget-s)")
            continue
        print(f"\n== {part} ({elapsed:.0f}s)", flush=True)
        if part in VARIANTS:
            out = cells_table(part, device, sizes, repeat, bases)
        elif part == "profile":
            B, H, W = sizes[-1]
            runs = [("fp32", "PyTorch"), ("bf16", "PyTorch"), ("fp32", "Triton")]
            out = "".join(run_script([__file__, "--profile-child", dtype, str(B), str(H), str(W),
                                      device, mode], 120) for dtype, mode in runs)  # fmt: skip
        elif part == "tests":
            out = run_script(["-m", "pytest", "-q", "-m", "gpu", "tests"], 240)
        elif part == "scan":
            out = run_script(["benchmarks/bench_scan.py", "--device", device, "--rounds", "1", *quick], 240)
        else:
            out = run_script(["benchmarks/bench_embed.py", "--device", device, *quick], 300)
        print(out, flush=True)
    print(f"\ngpu_suite: {time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
    main()
