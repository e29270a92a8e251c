"""A fused LSTM pointwise step with peepholes (sigmoid gates, tanh candidate and output).

Autograd would record ~15 elementwise ops per step forward and replay ~25 backward, each
streaming a full ``(B, F, H, W)`` tensor through memory. This Function computes the step in a
few passes and writes its own backward from the saved activations, which matters on CPU where
the factorized cell is memory-bound (issue #3's measurements). Numerically it is the textbook
update; :func:`lstm_pointwise_reference` is the unfused form it is tested against.

Shapes: ``z (B, 4F, H, W)`` gate pre-activations in order (i, f, c, o); ``c (B, F, H, W)``;
``peep (3, F, 1, 1)`` peephole weights for (i, f, o) or None.
"""

from __future__ import annotations

import torch


def lstm_pointwise_reference(z: torch.Tensor, c: torch.Tensor, peep: torch.Tensor | None):
    zi, zf, zc, zo = z.chunk(4, dim=1)
    if peep is not None:
        zi = zi + peep[0] * c
        zf = zf + peep[1] * c
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zc)
    if peep is not None:
        zo = zo + peep[2] * c_new
    h = torch.sigmoid(zo) * torch.tanh(c_new)
    return h, c_new


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
        F_ = i.shape[1]
        dz = torch.empty((i.shape[0], 4 * F_, *i.shape[2:]), dtype=i.dtype, device=i.device)
        dzi, dzf, dzc, dzo = dz.split(F_, dim=1)
        if dh is None:
            dh = torch.zeros_like(o)
        # o gate: h = o * tanh(c_new)
        torch.mul(dh * tc, o * (1 - o), out=dzo)
        # total gradient reaching c_new: from dc_new, from h through tanh, from the o peephole
        dct = dh * o * (1 - tc * tc)
        if dc_new is not None:
            dct = dct + dc_new
        if ctx.has_peep:
            dct = torch.addcmul(dct, dzo, peep[2])
        torch.mul(dct * g, i * (1 - i), out=dzi)
        torch.mul(dct * c, f * (1 - f), out=dzf)
        torch.mul(dct * i, 1 - g * g, out=dzc)
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


def lstm_pointwise(z: torch.Tensor, c: torch.Tensor, peep: torch.Tensor | None = None):
    """``(h, c_new)`` of one LSTM step with sigmoid gates and tanh activations."""
    return _LSTMPointwise.apply(z, c, peep)
