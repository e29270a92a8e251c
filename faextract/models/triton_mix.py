"""FAConvLSTM2D's spatial mixing as one Triton kernel: the CUDA path of
:meth:`faextract.models.faconvlstm.FAConvLSTM2D._mix` when triton is installed.

The mixing of the bottleneck features ``u (N, C, H, W)`` is a sum of depthwise stencils: the
shared k x k kernel and each dilated 3x3 branch times its learned scale. All of them are one
stencil of ``NT`` taps (offset ``(dy, dx)``, one weight per channel and tap; the branch scales
are folded into the weights by PyTorch, which also carries their gradients), zero-padded in
latitude and circular in longitude when the grid is periodic. One launch computes ``m`` and,
per program, the partial sums of ``m`` that squeeze-and-excitation's spatial mean needs, instead
of a padded copy, a convolution, a scale and an add per branch plus a mean.

Backward, mirrored: the input gradient is the same stencil with the offsets negated (the
transpose of a zero-padded or circular stencil), the weight gradient one reduction kernel
(per program and tap partial sums, reduced once). float32 and bfloat16 inputs, float32
accumulation; the weights are float32.

Developed and tested without a GPU: with ``TRITON_INTERPRET=1`` set before this module is
imported, the kernels run on CPU tensors (``tests/test_triton.py``). Program grid:
``(N * C, ceil(H * W / BLOCK))``.
"""

from __future__ import annotations

import torch

from faextract.models.triton_step import covers

try:  # an optional extra: `pip install "faextract[triton]"`
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

BLOCK = 256


if triton is not None:

    @triton.jit
    def _tap(u_ptr, base, y, x, dy, dx, m, H, W, PERIODIC: tl.constexpr):
        """``u[base + (y + dy) * W + (x + dx)]`` as float32, 0 outside the grid."""
        yy = y + dy
        ok = m & (yy >= 0) & (yy < H)
        if PERIODIC:
            xx = ((x + dx) % W + W) % W  # whichever sign convention % has
        else:
            xx = x + dx
            ok = ok & (xx >= 0) & (xx < W)
        return tl.load(u_ptr + base + yy * W + xx, mask=ok, other=0.0).to(tl.float32)

    @triton.jit
    def _block(H, W, BLOCK: tl.constexpr):
        """This program's plane (``n * C + channel``), block, offsets in the plane, their mask,
        rows, columns and the plane's start."""
        row = tl.program_id(0)
        blk = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        return row, blk, offs, offs < H * W, offs // W, offs % W, row * H * W

    @triton.jit
    def _stencil_kernel(u_ptr, w_ptr, dy_ptr, dx_ptr, out_ptr, sums_ptr, C, H, W, NT, NBLK,
                        SIGN: tl.constexpr, PERIODIC: tl.constexpr, SUMS: tl.constexpr,
                        BLOCK: tl.constexpr):  # fmt: skip
        row, blk, offs, m, y, x, base = _block(H, W, BLOCK)
        ch = row % C
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(NT):
            dy = SIGN * tl.load(dy_ptr + t)
            dx = SIGN * tl.load(dx_ptr + t)
            acc += tl.load(w_ptr + ch * NT + t) * _tap(u_ptr, base, y, x, dy, dx, m, H, W, PERIODIC)
        tl.store(out_ptr + base + offs, acc.to(out_ptr.dtype.element_ty), mask=m)
        if SUMS:  # masked lanes are 0: every tap load there is masked
            tl.store(sums_ptr + row * NBLK + blk, tl.sum(acc, axis=0))

    @triton.jit
    def _weight_grad_kernel(u_ptr, g_ptr, dy_ptr, dx_ptr, part_ptr, C, H, W, NT, NBLK,
                            PERIODIC: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        row, blk, offs, m, y, x, base = _block(H, W, BLOCK)
        g = tl.load(g_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        for t in range(NT):
            v = _tap(u_ptr, base, y, x, tl.load(dy_ptr + t), tl.load(dx_ptr + t), m, H, W, PERIODIC)
            tl.store(part_ptr + (row * NBLK + blk) * NT + t, tl.sum(g * v, axis=0))


def stencil_taps(kernel: int, dilations: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dy, dx)`` int32 offsets of the shared ``kernel`` x ``kernel`` stencil (dilation 1)
    then of a 3x3 stencil per dilation, row-major like the convolution weights."""
    dy, dx = [], []
    for k, d in [(kernel, 1), *((3, d) for d in dilations)]:
        for i in range(k):
            for j in range(k):
                dy.append((i - (k - 1) // 2) * d)
                dx.append((j - (k - 1) // 2) * d)
    as_int = dict(dtype=torch.int32, device=device)
    return torch.tensor(dy, **as_int), torch.tensor(dx, **as_int)


def _stencil(u, w, dy, dx, sign: int, periodic: bool, sums: bool):
    N, C, H, W = u.shape
    nblk = triton.cdiv(H * W, BLOCK)
    out = torch.empty_like(u)
    partial = torch.empty(N * C * nblk if sums else 1, dtype=torch.float32, device=u.device)
    _stencil_kernel[(N * C, nblk)](u, w, dy, dx, out, partial, C, H, W, w.shape[1], nblk,
                                   SIGN=sign, PERIODIC=periodic, SUMS=sums,
                                   BLOCK=BLOCK)  # fmt: skip
    return out, (partial.view(N, C, nblk).sum(dim=2) if sums else None)


class StencilMixTriton(torch.autograd.Function):
    """``(m, m summed over the grid (N, C) float32)`` from ``u (N, C, H, W)`` and the stencil's
    float32 weights ``w (C, NT)`` at offsets ``dy, dx (NT,)``; gradients for ``u`` and ``w``."""

    @staticmethod
    def forward(ctx, u, w, dy, dx, periodic: bool):
        u, w = u.contiguous(), w.contiguous()
        m, total = _stencil(u, w, dy, dx, 1, periodic, sums=True)
        ctx.save_for_backward(u, w, dy, dx)
        ctx.periodic = periodic
        return m, total

    @staticmethod
    def backward(ctx, dm, dtotal):
        u, w, dy, dx = ctx.saved_tensors
        N, C, H, W = u.shape
        g = torch.zeros_like(u) if dm is None else dm.to(u.dtype)
        if dtotal is not None:  # d(sum m)/dm = 1 everywhere
            g = g + dtotal.to(u.dtype)[:, :, None, None]
        g = g.contiguous()
        du, _ = _stencil(g, w, dy, dx, -1, ctx.periodic, sums=False)
        nblk = triton.cdiv(H * W, BLOCK)
        part = torch.empty(N * C * nblk * w.shape[1], dtype=torch.float32, device=u.device)
        _weight_grad_kernel[(N * C, nblk)](u, g, dy, dx, part, C, H, W, w.shape[1], nblk,
                                           PERIODIC=ctx.periodic, BLOCK=BLOCK)  # fmt: skip
        dw = part.view(N, C, nblk, -1).sum(dim=(0, 2))
        return du, dw, None, None, None


def multiscale_mix(u: torch.Tensor, shared: torch.Tensor, branches: list[torch.Tensor],
                   scales: torch.Tensor, dilations: tuple[int, ...],
                   periodic: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``shared_dw(u) + sum_j scales[j] * branch_j(u)`` and its sum over the grid ``(N, C)``:
    ``shared (C, 1, k, k)``, ``branches[j] (C, 1, 3, 3)`` at ``dilations[j]``."""
    C, k = shared.shape[0], shared.shape[-1]
    parts = [shared.reshape(C, k * k)]
    parts += [s * b.reshape(C, 9) for s, b in zip(scales, branches, strict=True)]
    w = torch.cat(parts, dim=1).float()
    dy, dx = stencil_taps(k, tuple(dilations), u.device)
    return StencilMixTriton.apply(u, w, dy, dx, bool(periodic))


def mix_covers(u: torch.Tensor) -> bool:
    """Whether :func:`multiscale_mix` takes ``u`` (as :func:`~faextract.models.triton_step.covers`)."""
    return covers(u, u)
