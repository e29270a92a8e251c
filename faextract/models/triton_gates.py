"""FAConvLSTM2D's gate path after the mixing as one Triton kernel: squeeze-and-excitation's
channel gains, the 1x1 projection of the ``b`` mixed channels to the ``4F`` gates, the bias and
the peephole LSTM update (:mod:`faextract.models.triton_step`'s arithmetic), on CUDA when
triton is installed.

Forward, per program (one sample, a block of grid cells): the block's ``b`` mixed channels
times their gains are loaded once; for each of the ``F`` channels the four gate
pre-activations are their dot products with four rows of the projection, and the LSTM update
is written as ``h`` and ``c_new``: instead of a gains multiply, a convolution writing the
``(N, 4F, H, W)`` gates, and the step reading them back. Backward recomputes the gates with
one matmul (cuBLAS), runs the pointwise step's backward kernel
(:func:`faextract.models.triton_step.pointwise_backward`: one program per sample, channel and
block of cells) and forms the gradients of the mixed channels, gains and projection with two
more matmuls. (The first design, a fused backward with one program per sample and block of
cells looping over the channels, was half of a whole step's GPU time on an H200.) float32 and
bfloat16 activations, float32 weights and arithmetic; no atomics, so results do not depend on
the order programs run in.

Shapes: ``m (N, b, H, W)``; ``gains (N, b)``; ``weight (4F, b)`` (gates i, f, c, o);
``bias (4F,)``; ``peep (3F,)`` (i, f, o); ``c (N, F, H, W)``. Program grid:
``(N, ceil(H * W / BLOCK))``. Tested on the CPU through Triton's interpreter
(``tests/test_triton.py``).
"""

from __future__ import annotations

import torch

try:  # an optional extra: `pip install "faextract[triton]"`
    import triton
    import triton.language as tl

    from faextract.models.triton_step import lstm_forward, pointwise_backward
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

BLOCK = 64


if triton is not None:
    @triton.jit
    def _gated(m_ptr, g_ptr, n, Bn, HW, KB: tl.constexpr, BLOCK: tl.constexpr):
        """``(m times its gains (KB, BLOCK) float32, m (KB, BLOCK), cell offsets, their mask,
        channel offsets, their mask)`` of this program's sample and block."""
        blk = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        cells = offs < HW
        ks = tl.arange(0, KB)
        chans = ks < Bn
        both = chans[:, None] & cells[None, :]
        m = tl.load(m_ptr + n * Bn * HW + ks[:, None] * HW + offs[None, :], mask=both, other=0.0)
        m = m.to(tl.float32)
        gains = tl.load(g_ptr + n * Bn + ks, mask=chans, other=0.0).to(tl.float32)
        return m * gains[:, None], m, offs, cells, ks, chans

    @triton.jit
    def _gate(w_ptr, b_ptr, gm, row, ks, chans, Bn):
        """Pre-activation of gate row ``row``: its weights dotted with ``gm``, plus its bias."""
        w = tl.load(w_ptr + row * Bn + ks, mask=chans, other=0.0).to(tl.float32)
        return tl.sum(w[:, None] * gm, axis=0) + tl.load(b_ptr + row).to(tl.float32), w

    @triton.jit
    def _gates(w_ptr, b_ptr, gm, f, F, ks, chans, Bn):
        """The four pre-activations of channel ``f`` (i, f, c, o) and their weight rows."""
        zi, wi = _gate(w_ptr, b_ptr, gm, f, ks, chans, Bn)
        zf, wf = _gate(w_ptr, b_ptr, gm, F + f, ks, chans, Bn)
        zc, wc = _gate(w_ptr, b_ptr, gm, 2 * F + f, ks, chans, Bn)
        zo, wo = _gate(w_ptr, b_ptr, gm, 3 * F + f, ks, chans, Bn)
        return zi, zf, zc, zo, wi, wf, wc, wo

    @triton.jit
    def _forward_kernel(m_ptr, g_ptr, w_ptr, b_ptr, p_ptr, c_ptr, h_ptr, cn_ptr, Bn, F, HW,
                        HAS_PEEP: tl.constexpr, KB: tl.constexpr,
                        BLOCK: tl.constexpr):  # fmt: skip
        n = tl.program_id(0)
        gm, _m, offs, cells, ks, chans = _gated(m_ptr, g_ptr, n, Bn, HW, KB, BLOCK)
        for f in range(F):
            zi, zf, zc, zo, _wi, _wf, _wc, _wo = _gates(w_ptr, b_ptr, gm, f, F, ks, chans, Bn)
            at = (n * F + f) * HW + offs
            c = tl.load(c_ptr + at, mask=cells, other=0.0).to(tl.float32)
            h, cn = lstm_forward(zi, zf, zc, zo, c, p_ptr, f, F, HAS_PEEP)
            tl.store(h_ptr + at, h.to(h_ptr.dtype.element_ty), mask=cells)
            tl.store(cn_ptr + at, cn.to(cn_ptr.dtype.element_ty), mask=cells)


class GatesTriton(torch.autograd.Function):
    """``(h, c_new)`` from ``m``, ``gains``, ``weight``, ``bias``, ``peep`` (or None) and ``c``
    (shapes in the module docstring); gradients for all of them."""

    @staticmethod
    def forward(ctx, m, gains, weight, bias, peep, c):
        N, Bn, H, W = m.shape
        F_ = c.shape[1]
        HW = H * W
        m, c = m.contiguous(), c.contiguous()
        g = gains.detach().float().contiguous()
        w = weight.detach().float().contiguous()
        b = bias.detach().float().contiguous()
        p = (torch.zeros(3 * F_, device=c.device) if peep is None
             else peep.detach().float().reshape(3 * F_).contiguous())  # fmt: skip
        h, c_new = torch.empty_like(c), torch.empty_like(c)
        kb = triton.next_power_of_2(Bn)
        grid = (N, triton.cdiv(HW, BLOCK))
        _forward_kernel[grid](m, g, w, b, p, c, h, c_new, Bn, F_, HW, HAS_PEEP=peep is not None,
                              KB=kb, BLOCK=BLOCK)  # fmt: skip
        ctx.save_for_backward(m, g, w, b, p, c, c_new)
        ctx.has_peep = peep is not None
        ctx.dtypes = (gains.dtype, weight.dtype, bias.dtype, None if peep is None else peep.dtype)
        ctx.peep_shape = None if peep is None else peep.shape
        return h, c_new

    @staticmethod
    def backward(ctx, dh, dc_new):
        m, g, w, b, p, c, c_new = ctx.saved_tensors
        N, Bn = m.shape[:2]
        m3 = m.reshape(N, Bn, -1).float()  # (N, b, HW), float32 (one cast for both uses)
        gm = m3 * g[:, :, None]  # the gained mixed channels
        z = torch.matmul(w, gm)  # (N, 4F, HW) gate pre-activations, recomputed without bias
        dz, dc, per_channel = pointwise_backward(z, b, c, c_new, p, dh, dc_new, ctx.has_peep)
        dgm = torch.matmul(w.T, dz)  # (N, b, HW)
        g_dtype, w_dtype, b_dtype, p_dtype = ctx.dtypes
        dm = (dgm * g[:, :, None]).to(m.dtype).reshape(m.shape)
        dgains = (dgm * m3).sum(dim=2).to(g_dtype)
        dweight = torch.einsum("nop,nbp->ob", dz, gm).to(w_dtype)
        dbias = per_channel[:4].reshape(-1).to(b_dtype)
        dpeep = per_channel[4:].reshape(ctx.peep_shape).to(p_dtype) if ctx.has_peep else None
        return dm, dgains, dweight, dbias, dpeep, dc


def gates_lstm(m, gains, weight, bias, peep, c):
    """``(h, c_new)``: see the module docstring; ``bias`` None means zeros."""
    if bias is None:
        bias = torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype)
    return GatesTriton.apply(m, gains, weight, bias, peep, c)
