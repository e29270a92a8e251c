"""The fused LSTM pointwise step as Triton kernels: the CUDA path of
:func:`faextract.models.fused.lstm_pointwise` when triton is installed.

One launch forward (bias, peepholes, gates, the new cell state and output) and one backward
(the activations recomputed from ``z`` and ``c``, so only those and ``c_new`` are saved; the
bias and peephole gradients as per-program partial sums reduced once), the same function as
the C kernels compute on the CPU and :func:`~faextract.models.fused.lstm_pointwise_reference`
states. Loads are widened to float32 (state and arithmetic in float32 for bfloat16 inputs);
outputs take the input's dtype.

Off unless ``FAEXTRACT_TRITON=1`` (:func:`enabled` says why). Tested without a GPU: with
``TRITON_INTERPRET=1`` set before this module is imported, the kernels run on CPU tensors
(``tests/test_triton.py``), and ``tests/test_triton_compile.py`` compiles them for sm_90. Program grid:
``(B * F, ceil(H * W / BLOCK))``; shapes as in :mod:`faextract.models.fused`.
"""

from __future__ import annotations

import os

import torch

from faextract.models.fused import (
    backward_buffers,
    parameter_grads,
    remember_parameters,
    triton_requested,
)

try:  # an optional extra: `pip install "faextract[triton]"`
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

BLOCK = 256
#: Partial sums per program in the backward: bias (i, f, c, o), then peepholes (i, f, o).
SUMS = 7


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def enabled() -> bool:
    """Whether the Triton kernels were asked for: ``FAEXTRACT_TRITON=1`` (and triton is there).

    Opt-in: on an H200 (``benchmarks/gpu_suite.py``, README "Speed") the kernels made a whole
    FAConvLSTM2D forward+backward slower than PyTorch's path at every size measured (the gate
    path's backward of that time, one program per sample and block looping over the channels,
    took half the step; it is matmuls and the pointwise kernel now, not yet timed on a GPU),
    so CUDA runs PyTorch unless told otherwise."""
    return triton is not None and triton_requested()


def covers(z: torch.Tensor, c: torch.Tensor) -> bool:
    """The Triton path takes CUDA tensors (CPU ones only under the interpreter) of float32 or
    bfloat16, outside torch.compile's tracing (which generates its own kernels), when
    :func:`enabled`."""
    if not enabled() or torch.compiler.is_compiling():
        return False
    if z.dtype not in (torch.float32, torch.bfloat16) or c.dtype != z.dtype:
        return False
    return z.is_cuda or (interpreted() and z.device.type == "cpu")


if triton is not None:

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _tanh(x):  # libdevice's tanh is missing in the interpreter
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    @triton.jit
    def lstm_forward(zi, zf, zc, zo, c, p_ptr, f, F, HAS_PEEP: tl.constexpr):
        """``(h, c_new)`` of channel ``f`` from its biased pre-activations and ``c`` (float32),
        peepholes ``p (3F,)`` (i, f, o)."""
        if HAS_PEEP:
            zi += tl.load(p_ptr + f).to(tl.float32) * c
            zf += tl.load(p_ptr + F + f).to(tl.float32) * c
        cn = _sigmoid(zf) * c + _sigmoid(zi) * _tanh(zc)
        if HAS_PEEP:
            zo += tl.load(p_ptr + 2 * F + f).to(tl.float32) * cn
        return _sigmoid(zo) * _tanh(cn), cn

    @triton.jit
    def lstm_backward(zi, zf, zc, zo, c, cn, dh, dcn, p_ptr, f, F, HAS_PEEP: tl.constexpr):
        """``(dzi, dzf, dzc, dzo, dc)`` of channel ``f``: the activations recomputed from the
        biased pre-activations, ``c`` and ``c_new``; ``dh``, ``dcn`` reach ``h`` and ``c_new``."""
        po = 0.0
        pi = 0.0
        pf = 0.0
        if HAS_PEEP:
            pi = tl.load(p_ptr + f).to(tl.float32)
            pf = tl.load(p_ptr + F + f).to(tl.float32)
            po = tl.load(p_ptr + 2 * F + f).to(tl.float32)
            zi += pi * c
            zf += pf * c
            zo += po * cn
        i = _sigmoid(zi)
        fg = _sigmoid(zf)
        g = _tanh(zc)
        o = _sigmoid(zo)
        tc = _tanh(cn)
        dzo = dh * tc * o * (1.0 - o)
        dct = dh * o * (1.0 - tc * tc) + dcn + dzo * po
        dzi = dct * g * i * (1.0 - i)
        dzf = dct * c * fg * (1.0 - fg)
        dzc = dct * i * (1.0 - g * g)
        dc = dct * fg + dzi * pi + dzf * pf
        return dzi, dzf, dzc, dzo, dc

    @triton.jit
    def store_sums(s, dzi, dzf, dzc, dzo, c, cn):
        """This program's 7 partial sums at ``s``: the bias gradients (i, f, c, o), then the
        peepholes' (i, f, o)."""
        tl.store(s, tl.sum(dzi, axis=0))
        tl.store(s + 1, tl.sum(dzf, axis=0))
        tl.store(s + 2, tl.sum(dzc, axis=0))
        tl.store(s + 3, tl.sum(dzo, axis=0))
        tl.store(s + 4, tl.sum(dzi * c, axis=0))
        tl.store(s + 5, tl.sum(dzf * c, axis=0))
        tl.store(s + 6, tl.sum(dzo * cn, axis=0))

    @triton.jit
    def _forward_kernel(z_ptr, b_ptr, c_ptr, p_ptr, h_ptr, cn_ptr, F, HW,
                        HAS_PEEP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0)  # b * F + f
        blk = tl.program_id(1)
        b = row // F
        f = row % F
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        zrow = b * 4 * F * HW + f * HW  # gate k of channel f: z[b, k * F + f]
        zi = tl.load(z_ptr + zrow + offs, mask=m, other=0.0).to(tl.float32)
        zf = tl.load(z_ptr + zrow + F * HW + offs, mask=m, other=0.0).to(tl.float32)
        zc = tl.load(z_ptr + zrow + 2 * F * HW + offs, mask=m, other=0.0).to(tl.float32)
        zo = tl.load(z_ptr + zrow + 3 * F * HW + offs, mask=m, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + row * HW + offs, mask=m, other=0.0).to(tl.float32)
        zi += tl.load(b_ptr + f).to(tl.float32)
        zf += tl.load(b_ptr + F + f).to(tl.float32)
        zc += tl.load(b_ptr + 2 * F + f).to(tl.float32)
        zo += tl.load(b_ptr + 3 * F + f).to(tl.float32)
        h, cn = lstm_forward(zi, zf, zc, zo, c, p_ptr, f, F, HAS_PEEP)
        tl.store(h_ptr + row * HW + offs, h.to(h_ptr.dtype.element_ty), mask=m)
        tl.store(cn_ptr + row * HW + offs, cn.to(cn_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _backward_kernel(z_ptr, b_ptr, c_ptr, cn_ptr, p_ptr, dh_ptr, dcn_ptr, dz_ptr, dc_ptr,
                         sums_ptr, F, HW, NBLK, HAS_PEEP: tl.constexpr,
                         BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0)
        blk = tl.program_id(1)
        b = row // F
        f = row % F
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        m = offs < HW
        zrow = b * 4 * F * HW + f * HW
        zi = tl.load(z_ptr + zrow + offs, mask=m, other=0.0).to(tl.float32)
        zf = tl.load(z_ptr + zrow + F * HW + offs, mask=m, other=0.0).to(tl.float32)
        zc = tl.load(z_ptr + zrow + 2 * F * HW + offs, mask=m, other=0.0).to(tl.float32)
        zo = tl.load(z_ptr + zrow + 3 * F * HW + offs, mask=m, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + row * HW + offs, mask=m, other=0.0).to(tl.float32)
        cn = tl.load(cn_ptr + row * HW + offs, mask=m, other=0.0).to(tl.float32)
        dh = tl.load(dh_ptr + row * HW + offs, mask=m, other=0.0).to(tl.float32)
        dcn = tl.load(dcn_ptr + row * HW + offs, mask=m, other=0.0).to(tl.float32)
        zi += tl.load(b_ptr + f).to(tl.float32)
        zf += tl.load(b_ptr + F + f).to(tl.float32)
        zc += tl.load(b_ptr + 2 * F + f).to(tl.float32)
        zo += tl.load(b_ptr + 3 * F + f).to(tl.float32)
        dzi, dzf, dzc, dzo, dc = lstm_backward(zi, zf, zc, zo, c, cn, dh, dcn, p_ptr, f, F, HAS_PEEP)
        ty = dz_ptr.dtype.element_ty
        tl.store(dz_ptr + zrow + offs, dzi.to(ty), mask=m)
        tl.store(dz_ptr + zrow + F * HW + offs, dzf.to(ty), mask=m)
        tl.store(dz_ptr + zrow + 2 * F * HW + offs, dzc.to(ty), mask=m)
        tl.store(dz_ptr + zrow + 3 * F * HW + offs, dzo.to(ty), mask=m)
        tl.store(dc_ptr + row * HW + offs, dc.to(dc_ptr.dtype.element_ty), mask=m)
        # masked lanes hold zeros (loads with other=0 give dh = dcn = 0, so every gradient is 0)
        store_sums(sums_ptr + (row * NBLK + blk) * 7, dzi, dzf, dzc, dzo, c, cn)


def pointwise_backward(z, b, c, c_new, p, dh, dc_new, has_peep: bool):
    """``(dz, dc, sums (7, F))`` of the pointwise step: ``z (B, 4F, H, W)`` without its bias,
    ``b (4F,)`` and ``p (3F,)`` float32, ``c``/``c_new (B, F, H, W)``; ``dh``/``dc_new`` the
    gradients reaching ``h`` and ``c_new`` (None: zeros). ``sums`` are the bias (i, f, c, o)
    and peephole (i, f, o) gradients per channel. Also the gate path's backward
    (:mod:`faextract.models.triton_gates`), which recomputes ``z`` with one matmul."""
    B, F_ = c.shape[:2]
    HW = c[0, 0].numel()
    dh, dc_new, dz, dc = backward_buffers(z, c, dh, dc_new)
    nblk = triton.cdiv(HW, BLOCK)
    sums = torch.empty(B * F_ * nblk * SUMS, dtype=torch.float32, device=c.device)
    _backward_kernel[(B * F_, nblk)](z, b, c, c_new, p, dh, dc_new, dz, dc, sums, F_, HW, nblk,
                                     HAS_PEEP=has_peep, BLOCK=BLOCK)  # fmt: skip
    return dz, dc, sums.view(B, F_, nblk, SUMS).sum(dim=(0, 2)).T


def _params(c: torch.Tensor, peep, bias, F_: int):
    """Peepholes and bias as contiguous float32 vectors (zeros when absent)."""
    zeros = torch.zeros(7 * F_, dtype=torch.float32, device=c.device)
    p = zeros[: 3 * F_] if peep is None else peep.detach().reshape(3 * F_).float().contiguous()
    b = zeros[3 * F_ :] if bias is None else bias.detach().float().contiguous()
    return p, b


class LSTMPointwiseTriton(torch.autograd.Function):
    """``(h, c_new)`` from ``z (B, 4F, H, W)``, ``c (B, F, H, W)``, ``peep (3, F, 1, 1)`` or
    None, ``bias (4F,)`` or None; gradients for all four."""

    @staticmethod
    def forward(ctx, z, c, peep, bias):
        B, F_ = c.shape[:2]
        HW = c[0, 0].numel()
        z, c = z.contiguous(), c.contiguous()
        p, b = _params(c, peep, bias, F_)
        h, c_new = torch.empty_like(c), torch.empty_like(c)
        grid = (B * F_, triton.cdiv(HW, BLOCK))
        _forward_kernel[grid](z, b, c, p, h, c_new, F_, HW, HAS_PEEP=peep is not None, BLOCK=BLOCK)
        ctx.save_for_backward(z, b, c, c_new, p)
        ctx.has_peep = peep is not None
        remember_parameters(ctx, peep, bias)
        return h, c_new

    @staticmethod
    def backward(ctx, dh, dc_new):
        z, b, c, c_new, p = ctx.saved_tensors
        dz, dc, sums = pointwise_backward(z, b, c, c_new, p, dh, dc_new, ctx.has_peep)
        return (dz, dc, *parameter_grads(ctx, sums))
