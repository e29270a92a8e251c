"""One command for a short GPU loan: every GPU measurement faextract reports, in one run.

    python benchmarks/gpu_suite.py              # on a GPU node: under ~8 minutes on one H100
    python benchmarks/gpu_suite.py --smoke      # rehearsal on a CPU: tiny sizes, ~2 minutes

Prints, each comparison measured in its own process (one process per row, so no row inherits
another's allocator state or compiled code):

1. cells forward+backward: ConvLSTM2D (cuDNN) against FAConvLSTM2D eager (with the Triton
   mixing and gate-path kernels when triton is installed, and without them) and
   compiled, fp32 and bf16
   autocast, at B=4 and B=32 on 64x64 and B=4 on 181x360 (T=12, C=8, 64 filters);
   ratios against ConvLSTM2D of the same dtype and size;
2. the scan cells (``bench_scan.py``) and embed end to end against the model alone
   (``bench_embed.py``), on the same device;
3. the GPU tests (``pytest -m gpu``).

``--smoke`` runs the same code on the CPU at tiny sizes with one repeat (the fp32 "eager"
FAConvLSTM2D row through Triton's interpreter, so the kernels run end to end), so that the
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
VARIANTS = [  # (cell, mode): eager uses the Triton kernels on CUDA when triton is installed
    ("ConvLSTM2D", "eager"),
    ("FAConvLSTM2D", "eager, no Triton"),
    ("FAConvLSTM2D", "eager"),
    ("FAConvLSTM2D", "compiled"),
]


def child(cell: str, mode: str, dtype: str, B: int, H: int, W: int, device: str, repeat: int):
    """Forward+backward frames/s of one cell (T=12, C=8, 64 filters; smoke: T=4, 8 filters)."""
    import os

    if mode == "eager, no Triton":
        os.environ["FAEXTRACT_TRITON"] = "0"
    elif mode == "eager" and device == "cpu" and dtype == "fp32":
        # the rehearsal runs the Triton kernels through the interpreter (which has no bf16)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    compiled = mode == "compiled"
    import torch
    from _common import timeit

    from faextract.models import ConvLSTM2D, FAConvLSTM2D

    smoke = device == "cpu"
    T, C, F = (4, 4, 8) if smoke else (12, 8, 64)
    torch.manual_seed(0)
    kw = dict(filters=F, kernel_size=3, padding="same", data_format="channels_first",
              return_sequences=True, in_channels=C)  # fmt: skip
    layer = (ConvLSTM2D if cell == "ConvLSTM2D" else FAConvLSTM2D)(**kw).to(device)
    if compiled:
        layer = torch.compile(layer)
    x = torch.randn(B, T, C, H, W, device=device)
    grad = torch.randn(B, T, F, H, W, device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else None

    def step():
        with amp:
            y = layer(x)
        y.float().backward(grad)

    seconds = timeit(step, repeat=repeat, warmup=3 if compiled else 2, sync=sync)
    print(json.dumps({"frames_per_s": B * T / seconds}))


def cells_table(device: str, sizes, repeat: int) -> str:
    from _common import device_label, in_child, table

    rows = []
    for B, H, W in sizes:
        for dtype in ("fp32", "bf16"):
            base = None
            for cell, mode in VARIANTS:
                argv = [__file__, "--child", cell, mode, dtype, str(B), str(H),
                        str(W), device, str(repeat)]  # fmt: skip
                try:
                    rate = in_child(argv)["frames_per_s"]
                except subprocess.CalledProcessError as err:  # report, do not lose the run
                    tail = (err.stderr or "").strip().splitlines()[-1:] or ["failed"]
                    rows.append(dict(size=f"B={B} {H}x{W}", dtype=dtype, cell=cell, mode=mode,
                                     note=tail[0][:60]))  # fmt: skip
                    continue
                base = base or rate
                rows.append(dict(
                    size=f"B={B} {H}x{W}", dtype=dtype, cell=cell, mode=mode,
                    **{"fwd+bwd frames/s": f"{rate:,.0f}", "vs ConvLSTM2D": f"{rate / base:.2f}x"},
                ))  # fmt: skip
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
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        c = args.child
        return child(c[0], c[1], c[2], *map(int, c[3:6]), c[6], int(c[7]))
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite: no CUDA device here; use --smoke to rehearse on the CPU")
    start = time.perf_counter()
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print(cells_table(device, SMOKE_SIZES if args.smoke else SIZES, 1 if args.smoke else 10),
          flush=True)  # fmt: skip
    quick = ["--quick"] if args.smoke else []
    print(run_script(["benchmarks/bench_scan.py", "--device", device, "--rounds", "1", *quick], 240), flush=True)
    print(run_script(["benchmarks/bench_embed.py", "--device", device, *quick], 300), flush=True)
    print(run_script(["-m", "pytest", "-q", "-m", "gpu", "tests"], 240), flush=True)
    print(f"\ngpu_suite: {time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
    main()
