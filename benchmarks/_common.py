"""Shared helpers for the benchmark scripts: timing, peak memory, tables.

Benchmarks are scripts, not tests: they print tables of ratios measured in one run on one
machine; absolute seconds depend on the machine and are only printed for orientation.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch


def timeit(fn, repeat: int = 5, warmup: int = 2, sync=None) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB).

    Linux's VmHWM, which starts afresh at exec; ``getrusage``'s ru_maxrss does not, so in a
    child started by a large parent it would report the parent's size.
    """
    hwm = _status_mb("VmHWM")
    if hwm == hwm:  # not NaN: /proc is there
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cuda_peak(fn) -> float:
    """Peak CUDA memory (MB) allocated while running ``fn()``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_step_peak_mb(fn) -> float:
    """Peak memory (MB) that ``fn()`` adds on top of what the process already holds.

    Reads the kernel's high-water mark (VmHWM) around one call; meaningful for the first large
    call in a fresh process, so the benchmark scripts measure memory in a child process each.
    """
    before = _status_mb("VmRSS")
    fn()
    return max(0.0, _status_mb("VmHWM") - before)


def in_child(argv: list[str], timeout: float | None = None) -> dict:
    """Run ``python <argv>`` and parse the JSON it prints last (``subprocess.TimeoutExpired``
    after ``timeout`` seconds)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True,
                         timeout=timeout)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], columns: list[str], title: str) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = [f"\n{title}", "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |"]
    lines.append("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |")
    return "\n".join(lines)


def growth_table(results: list[dict], label: str, title: str) -> str:
    """Peak-RSS table for runs on 1x and 10x the data (``results``: child JSON, 1x first)."""
    rows = [
        {
            label: f"{f}x",
            "windows": r["windows"],
            "peak RSS MB": f"{r['peak_rss_mb']:.0f}",
            "growth": "-",
        }
        for f, r in zip((1, 10), results, strict=True)
    ]
    rows[1]["growth"] = f"{100 * (results[1]['peak_rss_mb'] / results[0]['peak_rss_mb'] - 1):+.0f}%"
    return table(rows, [label, "windows", "peak RSS MB", "growth"], title)


def devices_arg(ap) -> None:
    """Add ``--device {all,cpu,cuda}`` to a benchmark's argument parser."""
    ap.add_argument(
        "--device",
        choices=["all", "cpu", "cuda"],
        default="all",
        help="where to measure (default: the CPU, and CUDA when present)",
    )


def device_label(device: str, bf16: bool = True) -> str:
    """How a table's title names where it was measured (CUDA runs use bf16 autocast if so)."""
    if device == "cuda":
        return "CUDA, bf16 autocast" if bf16 else "CUDA"
    return f"CPU, {torch.get_num_threads()} threads"


def chosen_devices(arg: str) -> list[str]:
    """The devices a ``--device`` value selects; CUDA only when one is present."""
    have = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if arg == "cuda" and "cuda" not in have:
        raise SystemExit("--device cuda: no CUDA device is present")
    return have if arg == "all" else [arg]
