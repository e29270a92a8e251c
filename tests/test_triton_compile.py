"""Every Triton kernel compiles for a real GPU target, here on the CPU.

The CPU tests run the kernels through Triton's interpreter, which executes them as Python and
does not apply the compiler's rules (a kernel reading a plain-int module global ran there and
failed to compile on an H200). This compiles each kernel, in each constexpr variant faextract
launches and for float32 and bfloat16 activations, with Triton's own compiler for an sm_90
(Hopper) target: no GPU is needed to build the device code.
"""

from __future__ import annotations

import itertools

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from faextract.models import triton_gates, triton_mix, triton_step  # noqa: E402

I32_POINTERS = {"dy_ptr", "dx_ptr"}  # stencil offsets


def signature(kernel, activations: set[str], dtype: str, constexprs: dict) -> dict:
    """Triton's signature of ``kernel``: activation pointers in ``dtype``, the offsets int32,
    every other pointer (parameters, partial sums) float32, other plain arguments int32."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in I32_POINTERS:
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}" if name in activations else "*fp32"
        else:
            sig[name] = "i32"
    return sig


STEP = {"z_ptr", "c_ptr", "h_ptr", "cn_ptr", "dh_ptr", "dcn_ptr", "dz_ptr", "dc_ptr"}
GATES = {"m_ptr", "c_ptr", "h_ptr", "cn_ptr", "dh_ptr", "dcn_ptr", "dm_ptr", "dc_ptr"}
MIX = {"u_ptr", "out_ptr", "g_ptr"}
PEEP = [{"HAS_PEEP": p} for p in (True, False)]
CASES = [
    *((triton_step._forward_kernel, STEP, dict(c, BLOCK=triton_step.BLOCK)) for c in PEEP),
    *((triton_step._backward_kernel, STEP, dict(c, BLOCK=triton_step.BLOCK)) for c in PEEP),
    *((triton_gates._forward_kernel, GATES, dict(c, KB=16, BLOCK=triton_gates.BLOCK)) for c in PEEP),
    *(
        (triton_mix._stencil_kernel, MIX,
         dict(SIGN=sign, PERIODIC=periodic, SUMS=sums, BLOCK=triton_mix.BLOCK))  # fmt: skip
        for sign, periodic, sums in [(1, False, True), (1, True, True), (-1, False, False), (-1, True, False)]
    ),
    *((triton_mix._weight_grad_kernel, MIX, dict(PERIODIC=p, BLOCK=triton_mix.BLOCK)) for p in (False, True)),
]


@pytest.mark.parametrize(
    "case, dtype",
    list(itertools.product(CASES, ["fp32", "bf16"])),
    ids=lambda v: v if isinstance(v, str) else f"{v[0].fn.__module__.split('.')[-1]}.{v[0].fn.__name__}-"
    + "-".join(f"{k}={x}" for k, x in v[2].items() if k not in ("BLOCK", "KB")),
)
def test_kernel_compiles_for_sm90(case, dtype):
    kernel, activations, constexprs = case
    source = ASTSource(kernel, signature(kernel, activations, dtype, constexprs), constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["ptx"]  # the device code was generated
