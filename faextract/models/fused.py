"""A fused LSTM pointwise step with peepholes (sigmoid gates, tanh candidate and output).

Autograd would record ~15 elementwise ops per step forward and replay ~25 backward, each
streaming a full ``(B, F, H, W)`` tensor through memory, which is what bounds the factorized
cell on the CPU (``benchmarks/bench_cells.py``). Two implementations of the same function:

- float32 on the CPU: the C kernels of :mod:`faextract.models.kernels`, one pass forward and one
  backward (the backward recomputes the activations from ``z`` and ``c``);
- float32 or bfloat16 on CUDA with triton installed and ``FAEXTRACT_TRITON=1``: the same two
  passes as Triton kernels (:mod:`faextract.models.triton_step`);
- everywhere else (other dtypes, no C compiler, no triton): a PyTorch Function that computes the
  step in a few passes and writes its own backward from the saved activations.

Numerically both are the textbook update; :func:`lstm_pointwise_reference` is the unfused form
they are tested against.

Shapes: ``z (B, 4F, H, W)`` gate pre-activations in order (i, f, c, o); ``c (B, F, H, W)``;
``peep (3, F, 1, 1)`` peephole weights for (i, f, o) or None.
"""

from __future__ import annotations

import os

import torch

from faextract.models import kernels


def triton_requested() -> bool:
    """``FAEXTRACT_TRITON=1``: the opt-in for the Triton kernels, read without importing triton
    (:func:`faextract.models.triton_step.enabled` says why they are opt-in)."""
    return os.environ.get("FAEXTRACT_TRITON") == "1"


def lstm_pointwise_reference(
    z: torch.Tensor,
    c: torch.Tensor,
    peep: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    act=torch.tanh,
    rec_act=torch.sigmoid,
):
    """The unfused step, for any activations (``act`` for candidate and output, ``rec_act``
    for the gates); with the defaults, the function the fused paths compute."""
    if bias is not None:
        z = z + bias.view(1, -1, 1, 1)
    zi, zf, zc, zo = z.chunk(4, dim=1)
    if peep is not None:
        zi = zi + peep[0] * c
        zf = zf + peep[1] * c
    c_new = rec_act(zf) * c + rec_act(zi) * act(zc)
    if peep is not None:
        zo = zo + peep[2] * c_new
    h = rec_act(zo) * act(c_new)
    return h, c_new


def remember_parameters(ctx, peep: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    """Keep the peepholes' and bias's dtypes for :func:`parameter_grads`."""
    ctx.param_dtypes = tuple(None if t is None else t.dtype for t in (peep, bias))


def backward_buffers(z: torch.Tensor, c: torch.Tensor, dh, dc_new):
    """A fused backward's inputs and outputs: the gradients reaching ``h`` and ``c_new``
    (zeros for an output unused downstream), contiguous, and empty ``dz``, ``dc``."""
    dh = torch.zeros_like(c) if dh is None else dh.contiguous()
    dc_new = torch.zeros_like(c) if dc_new is None else dc_new.contiguous()
    return dh, dc_new, torch.empty_like(z), torch.empty_like(c)


def parameter_grads(ctx, sums: torch.Tensor):
    """``(dpeep (3, F, 1, 1), dbias (4F,))`` in the parameters' dtypes from the per-channel sums
    ``(7, F)`` (bias i, f, c, o; peepholes i, f, o); None where no gradient is asked for."""
    F_ = sums.shape[1]
    peep_dtype, bias_dtype = ctx.param_dtypes
    dpeep = sums[4:].reshape(3, F_, 1, 1).to(peep_dtype) if ctx.needs_input_grad[2] else None
    dbias = sums[:4].reshape(4 * F_).to(bias_dtype) if ctx.needs_input_grad[3] else None
    return dpeep, dbias


class _LSTMPointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, c, peep):
        zi, zf, zc, zo = z.chunk(4, dim=1)
        if peep is not None:
            zi = torch.addcmul(zi, peep[0], c)
            zf = torch.addcmul(zf, peep[1], c)
        i = torch.sigmoid(zi)
        f = torch.sigmoid(zf)
        g = torch.tanh(zc)
        c_new = torch.addcmul(f * c, i, g)
        o = torch.sigmoid(zo if peep is None else torch.addcmul(zo, peep[2], c_new))
        tc = torch.tanh(c_new)
        h = o * tc
        ctx.save_for_backward(i, f, g, o, tc, c, c_new, peep)
        ctx.has_peep = peep is not None
        return h, c_new

    @staticmethod
    def backward(ctx, dh, dc_new):
        i, f, g, o, tc, c, c_new, peep = ctx.saved_tensors
        if dh is None:
            dh = torch.zeros_like(o)
        # o gate: h = o * tanh(c_new)
        dzo = dh * tc * (o * (1 - o))
        # total gradient reaching c_new: from dc_new, from h through tanh, from the o peephole
        dct = dh * o * (1 - tc * tc)
        if dc_new is not None:
            dct = dct + dc_new
        if ctx.has_peep:
            dct = torch.addcmul(dct, dzo, peep[2])
        dzi = dct * g * (i * (1 - i))
        dzf = dct * c * (f * (1 - f))
        dzc = dct * i * (1 - g * g)
        # one concatenation, not out= writes into views of dz: those break torch.compile's graph
        dz = torch.cat([dzi, dzf, dzc, dzo], dim=1)
        dc = dct * f
        dpeep = None
        if ctx.has_peep:
            dc = torch.addcmul(torch.addcmul(dc, dzi, peep[0]), dzf, peep[1])
            if ctx.needs_input_grad[2]:
                dpeep = torch.stack(
                    [
                        (dzi * c).sum(dim=(0, 2, 3)),
                        (dzf * c).sum(dim=(0, 2, 3)),
                        (dzo * c_new).sum(dim=(0, 2, 3)),
                    ]
                ).view_as(peep)
        return dz, dc, dpeep


class _LSTMPointwiseCPU(torch.autograd.Function):
    """The C kernels; saves only ``z``, ``c`` and ``c_new`` and recomputes the activations."""

    @staticmethod
    def forward(ctx, z, c, peep, bias):
        lib = kernels.library()
        B, F_ = c.shape[:2]
        HW = c[0, 0].numel()
        z, c = z.contiguous(), c.contiguous()
        p = c.new_zeros(3, F_) if peep is None else peep.detach().reshape(3, F_).contiguous()
        b = c.new_zeros(4 * F_) if bias is None else bias.detach().contiguous()
        h, c_new = torch.empty_like(c), torch.empty_like(c)
        ptrs = (t.data_ptr() for t in (z, b, c, p, h, c_new))
        kernels.run_rows(lib.faex_lstm_forward, B * F_, *ptrs, F_, HW, work=c.numel())
        ctx.save_for_backward(z, b, c, c_new, p)
        remember_parameters(ctx, peep, bias)
        return h, c_new

    @staticmethod
    def backward(ctx, dh, dc_new):
        z, b, c, c_new, p = ctx.saved_tensors
        B, F_ = c.shape[:2]
        HW = c[0, 0].numel()
        dh, dc_new, dz, dc = backward_buffers(z, c, dh, dc_new)
        sums = torch.empty(B * F_, 7, dtype=torch.float64)
        ptrs = (t.data_ptr() for t in (z, b, c, c_new, p, dh, dc_new, dz, dc, sums))
        kernels.run_rows(
            kernels.library().faex_lstm_backward, B * F_, *ptrs, F_, HW, work=c.numel()
        )
        return (dz, dc, *parameter_grads(ctx, sums.view(B, F_, 7).sum(0).T))


def lstm_pointwise(
    z: torch.Tensor,
    c: torch.Tensor,
    peep: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
):
    """``(h, c_new)`` of one LSTM step with sigmoid gates and tanh activations.

    z: ``(B, 4F, H, W)`` pre-activations (i, f, c, o), to which ``bias (4F,)`` is added;
    c: ``(B, F, H, W)``; peep: ``(3, F, 1, 1)`` peephole weights for (i, f, o).
    """
    if kernels.covers(z, c, peep, bias):
        return _LSTMPointwiseCPU.apply(z, c, peep, bias)
    if z.is_cuda:
        from faextract.models import triton_step  # imports triton (0.15 s): only on CUDA

        if triton_step.covers(z, c):
            return triton_step.LSTMPointwiseTriton.apply(z, c, peep, bias)
    if bias is not None:
        z = z + bias.view(1, -1, 1, 1)
    return _LSTMPointwise.apply(z, c, peep)
