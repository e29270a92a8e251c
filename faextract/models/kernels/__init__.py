"""Fused CPU kernels in C, compiled on first use and called through ctypes.

Why: on the CPU the factorized cells are bound by memory passes, not FLOPs (measured with
``benchmarks/bench_cells.py``): PyTorch runs each elementwise op as its own pass over a full ``(B, F, H, W)``
tensor, and an LSTM step with peepholes makes ~30 of them forward and backward. The C kernels
here do a step in one pass each way. They are an accelerator, never a requirement: without a C
compiler, with ``FAEXTRACT_CPU_KERNELS=0``, or for tensors they do not cover (CUDA, float64,
bfloat16), callers use their PyTorch path, which computes the same function.

Building: ``$CC`` (default ``cc``) compiles the sources of this folder with ``-O3
-march=native`` into ``$FAEXTRACT_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/faextract`` or
``~/.cache/faextract``), once per source, flags and CPU (the file name carries a hash of all
three, so a home directory shared by different cluster nodes holds one build per CPU kind;
an unwritable home falls back to a per-user folder in the temporary directory).
The build writes a temporary file and renames it, so concurrent first uses (DDP ranks, array
tasks) are safe. If the compiler rejects the x86 tuning flags, portable flags are tried; a build
that fails with both warns once and the process goes on with PyTorch.

Threads: a kernel call takes a range of rows; :func:`run_rows` splits the rows over
``torch.get_num_threads()`` Python threads (ctypes releases the GIL during the call), so the
kernels follow the same thread setting as PyTorch and bring no OpenMP runtime of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import stat
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCES = sorted(Path(__file__).parent.glob("*.c"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
# Measured on GCC 12: without -fno-trapping-math the loops stay scalar; -std=c11 (not gnu11)
# would turn off multiply-add contraction; 512-bit vectors ran 1.4x faster where available.
# No -ffast-math: linked into a shared library it sets flush-to-zero for the whole process.
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-std=gnu11", "-ffp-contract=fast"]
FLAGS += ["-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared"]
# Tried when those fail: -mprefer-vector-width is x86-only (an aarch64 GPU node's GCC rejects
# it) and some compilers lack -march=native.
PORTABLE_FLAGS = [f for f in FLAGS if f not in ("-march=native", "-mprefer-vector-width=512")]
ENV_SWITCH = "FAEXTRACT_CPU_KERNELS"

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {
    # (z, bias, c, peep, h, c_new, F, HW, row0, row1)
    "faex_lstm_forward": [_ptr] * 6 + [_i64] * 4,
    # (z, bias, c, c_new, peep, dh, dc_new, dz, dc, sums, F, HW, row0, row1)
    "faex_lstm_backward": [_ptr] * 10 + [_i64] * 4,
    # (x, w, y, C, H, W, Ho, Wo, kh, kw, d, ph, pw, p0, p1)
    "faex_depthwise_forward": [_ptr] * 3 + [_i64] * 12,
    # (x, g, gw, H, W, Ho, Wo, kh, kw, d, ph, pw, p0, p1)
    "faex_depthwise_weight_grad": [_ptr] * 3 + [_i64] * 11,
    # (k, h0, h, mode, T, nO, nI, kB, kT, kO, kG, hB, hT, hO, row0, row1)
    "faex_minscan_forward": [_ptr] * 3 + [_i64] * 13,
    # (k, h0, h, dh, dk, dh0, mode, T, nO, nI, kB, kT, kO, kG, hB, hT, hO, row0, row1)
    "faex_minscan_backward": [_ptr] * 6 + [_i64] * 13,
}


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def cache_dir() -> Path:
    """Where built kernels are kept: ``$FAEXTRACT_KERNEL_CACHE``, else ``~/.cache/faextract``;
    when that cannot be written (a read-only or full home on a compute node), a per-user
    folder in the temporary directory.

    A library is loaded into the process, so its folder must be private: created with mode
    0700, and refused when another user owns it or others may write to it (a folder with a
    guessable name in a shared /tmp could be planted by another user). A refused or unusable
    folder falls back to a fresh private temporary folder for this process.
    """
    if os.environ.get("FAEXTRACT_KERNEL_CACHE"):
        candidates = [Path(os.environ["FAEXTRACT_KERNEL_CACHE"])]
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        candidates = [
            Path(base) / "faextract",
            Path(tempfile.gettempdir()) / f"faextract-kernels-{uid}",
        ]
    for folder in candidates:
        if _private(folder):
            return folder
    return Path(tempfile.mkdtemp(prefix="faextract-kernels-"))


def _private(folder: Path) -> bool:
    """Create ``folder`` (mode 0700) if needed; True if it is ours and no one else can write."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _trusted(folder) and os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        return False


def _trusted(path: Path) -> bool:
    """Owned by this user (or root) and not writable by group or others; not a link."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid in (os.getuid(), 0)
    return owner_ok and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _cpu_identity() -> str:
    """What -march=native depends on: the architecture and, on Linux, the CPU's model and flags."""
    ident = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    ident += line
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return ident


def _build(target: Path, compiler: str, flags: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, "-o", tmp, *map(str, SOURCES)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            message = (run.stderr.strip().splitlines() or ["no message"])[0]
            raise OSError(f"{' '.join(cmd)} failed: {message}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _target(compiler: str, flags: list[str]) -> Path:
    """The cached library for these sources, compiler, flags and CPU."""
    digest = hashlib.sha256()
    for part in [
        *(s.read_bytes() for s in SOURCES + HEADERS),
        " ".join([compiler, *flags]).encode(),
    ]:
        digest.update(part)
    digest.update(_cpu_identity().encode())
    return cache_dir() / f"kernels-{digest.hexdigest()[:16]}.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them if needed; None when disabled or not buildable."""
    if not enabled():
        return None
    compiler = os.environ.get("CC", "cc")
    lib, errors = None, []
    for flags in (FLAGS, PORTABLE_FLAGS):
        target = _target(compiler, flags)
        try:
            # Load only what this user built and no one else can change; anything else in
            # the folder under that name is rebuilt over.
            if not target.exists() or not _trusted(target):
                _build(target, compiler, flags)
            lib = ctypes.CDLL(str(target))
            break
        except OSError as e:
            errors.append(e)
    if lib is None:
        warnings.warn(
            f"faextract: fused CPU kernels unavailable ({errors[0]}); using the slower PyTorch "
            f"path (set {ENV_SWITCH}=0 to skip the build)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


_held_off = 0  # depth of open disabled() blocks


@contextlib.contextmanager
def disabled():
    """Within the block every caller takes its PyTorch path: to compare the two, or to count
    FLOPs with ``torch.utils.flop_counter`` (which sees PyTorch operators only)."""
    global _held_off
    _held_off += 1
    try:
        yield
    finally:
        _held_off -= 1


def covers(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can take these tensors (contiguous float32 on the CPU) and are built.
    Never while ``torch.compile`` traces: a ctypes call is opaque to it (a graph break per call),
    and the PyTorch path it traces instead computes the same function."""
    if _held_off or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32):
            return False
    return library() is not None


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faextract-kernel")


#: Below this many values a call stays on the calling thread: handing rows to a pool thread
#: and waiting for it cost 0.1-0.4 ms on the 2-core development machine, as much as a
#: depthwise convolution of 2**19 values takes on one core.
MIN_PARALLEL_WORK = 1 << 19


def run_rows(fn, rows: int, *args, work: int | None = None) -> None:
    """Call ``fn(*args, row0, row1)`` over ``range(rows)`` split across PyTorch's thread count;
    ``work`` (the values the call touches) keeps small calls on one thread."""
    n = max(1, min(torch.get_num_threads(), rows))
    if work is not None and work < MIN_PARALLEL_WORK:
        n = 1
    bounds = [rows * k // n for k in range(n + 1)]
    futures = [_pool(n).submit(fn, *args, bounds[k], bounds[k + 1]) for k in range(1, n)]
    fn(*args, bounds[0], bounds[1])
    for f in futures:
        f.result()
