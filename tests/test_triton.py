"""The Triton kernels (the LSTM step, FAConvLSTM2D's spatial mixing and gate path) against the PyTorch
reference, run by Triton's interpreter on the CPU (a subprocess: ``TRITON_INTERPRET=1`` must be
set before the kernels are defined)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

CHECK = r"""
import torch
from faextract.models.fused import lstm_pointwise_reference
from faextract.models.triton_step import LSTMPointwiseTriton, covers

torch.manual_seed(0)
assert covers(torch.zeros(1), torch.zeros(1))
for (B, F, H, W) in [(2, 3, 16, 16), (2, 2, 5, 7)]:  # an odd grid exercises the masks
    for peephole in (True, False):
        for with_bias in (True, False):
            z = torch.randn(B, 4 * F, H, W, dtype=torch.float64).float().requires_grad_()
            c = torch.randn(B, F, H, W).requires_grad_()
            peep = torch.randn(3, F, 1, 1).requires_grad_() if peephole else None
            bias = torch.randn(4 * F).requires_grad_() if with_bias else None
            dh, dcn = torch.randn(B, F, H, W), torch.randn(B, F, H, W)
            h, cn = LSTMPointwiseTriton.apply(z, c, peep, bias)
            h_r, cn_r = lstm_pointwise_reference(z, c, peep, bias)
            torch.testing.assert_close(h, h_r, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cn, cn_r, rtol=1e-5, atol=1e-5)
            inputs = [t for t in (z, c, peep, bias) if t is not None]
            got = torch.autograd.grad((h * dh).sum() + (cn * dcn).sum(), inputs)
            want = torch.autograd.grad((h_r * dh).sum() + (cn_r * dcn).sum(), inputs)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
            # only dh (c_new unused downstream): the missing gradient counts as zero
            h, _ = LSTMPointwiseTriton.apply(z, c, peep, bias)
            g1 = torch.autograd.grad(h.sum(), [z])[0]
            g2 = torch.autograd.grad(lstm_pointwise_reference(z, c, peep, bias)[0].sum(), [z])[0]
            torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)
print("ok")
"""


MIX_CHECK = r"""
import torch
from faextract.models.layers import DepthwiseConv
from faextract.models.triton_mix import mix_covers, multiscale_mix

torch.manual_seed(0)
for (N, C, H, W) in [(2, 3, 16, 16), (2, 2, 5, 7)]:  # an odd grid exercises the masks
    for periodic in (False, True):
        shared = DepthwiseConv(C, 3, 1, periodic)
        branches = [DepthwiseConv(C, 3, d, periodic) for d in (2, 4)]
        scales = torch.tensor([0.5, -0.3], requires_grad=True)
        u = torch.randn(N, C, H, W, requires_grad=True)
        assert mix_covers(u)
        m, total = multiscale_mix(u, shared.conv.weight, [b.conv.weight for b in branches],
                                  scales, (2, 4), periodic)
        ref = shared(u) + sum(s * b(u) for s, b in zip(scales, branches))
        torch.testing.assert_close(m, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(total, ref.sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
        dm, dtotal = torch.randn_like(m), torch.randn(N, C)
        params = [u, shared.conv.weight, *[b.conv.weight for b in branches], scales]
        got = torch.autograd.grad((m * dm).sum() + (total * dtotal).sum(), params)
        want = torch.autograd.grad((ref * dm).sum() + (ref.sum(dim=(2, 3)) * dtotal).sum(), params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
print("ok")
"""

GATES_CHECK = r"""
import torch
from faextract.models.fused import lstm_pointwise_reference
from faextract.models.triton_gates import gates_lstm

torch.manual_seed(0)
for (N, Bn, F, H, W) in [(2, 8, 3, 16, 16), (2, 5, 2, 5, 7)]:  # 5 channels: a padded block
    for peephole in (True, False):
        m = torch.randn(N, Bn, H, W, requires_grad=True)
        gains = torch.rand(N, Bn, requires_grad=True)
        weight = torch.randn(4 * F, Bn, requires_grad=True)
        bias = torch.randn(4 * F, requires_grad=True)
        peep = torch.randn(3, F, 1, 1, requires_grad=True) if peephole else None
        c = torch.randn(N, F, H, W, requires_grad=True)
        h, cn = gates_lstm(m, gains, weight, bias, peep, c)
        z = torch.einsum("kb,nbhw->nkhw", weight, m * gains[:, :, None, None])
        h_r, cn_r = lstm_pointwise_reference(z, c, peep, bias)
        torch.testing.assert_close(h, h_r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cn, cn_r, rtol=1e-5, atol=1e-5)
        dh, dcn = torch.randn_like(h), torch.randn_like(cn)
        inputs = [t for t in (m, gains, weight, bias, peep, c) if t is not None]
        got = torch.autograd.grad((h * dh).sum() + (cn * dcn).sum(), inputs)
        want = torch.autograd.grad((h_r * dh).sum() + (cn_r * dcn).sum(), inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
print("ok")
"""

CELL_CHECK = r"""
import os, torch
from faextract.models import triton_gates, triton_mix
from faextract.models.faconvlstm import FAConvLSTM2D

calls = {"n": 0, "gates": 0}
real, real_gates = triton_mix.StencilMixTriton.apply, triton_gates.GatesTriton.apply
def counted(*a):
    calls["n"] += 1
    return real(*a)
def counted_gates(*a):
    calls["gates"] += 1
    return real_gates(*a)
triton_mix.StencilMixTriton.apply = counted
triton_gates.GatesTriton.apply = counted_gates
torch.manual_seed(0)
for kw in [dict(), dict(se=False), dict(multiscale=False), dict(periodic=True, attention=False)]:
    cell = FAConvLSTM2D(6, 3, padding="same", data_format="channels_first", in_channels=3,
                        return_sequences=True, embedding_dim=0, **kw)
    x = torch.randn(2, 4, 3, 9, 12)
    outs, grads = [], []
    for flag in ("1", "0"):  # the Triton mixing, then the PyTorch path
        os.environ["FAEXTRACT_TRITON"] = flag
        before = calls["n"]
        xx = x.clone().requires_grad_()
        y = cell(xx)
        assert (calls["n"] - before == 4) == (flag == "1"), "one mixing call a step"
        assert calls["gates"] == calls["n"], "and one gate-path call"
        weight = torch.linspace(-1, 1, y.numel()).view_as(y)
        outs.append(y)
        grads.append(torch.autograd.grad((y * weight).sum(), [xx, *cell.parameters()],
                                         allow_unused=True))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
del os.environ["FAEXTRACT_TRITON"]  # opt-in: unset means the PyTorch path
before = calls["n"]
cell(x)
assert calls["n"] == before, "the kernels run only with FAEXTRACT_TRITON=1"
print("ok")
"""


def _interpreted(code: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "FAEXTRACT_TRITON": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_triton_lstm_step_matches_the_reference_forward_and_backward():
    """fp32, with and without peepholes and bias, a 16x16 grid and an odd 5x7 one: outputs and
    the gradients of z, c, peepholes and bias within 1e-5 of the PyTorch reference."""
    _interpreted(CHECK)


def test_triton_mixing_matches_the_depthwise_branches_forward_and_backward():
    """The shared 3x3 stencil plus the dilated branches (2, 4) times their scales, zero-padded
    or circular in longitude, and its sum over the grid (squeeze-and-excitation's input): the
    output and the gradients of the input, each kernel and the scales within 1e-5 of the
    PyTorch convolutions, on a 16x16 grid and an odd 5x7 one."""
    _interpreted(MIX_CHECK)


def test_triton_gate_path_matches_gains_projection_and_lstm_step():
    """Squeeze-and-excitation gains x the 1x1 projection to the gates + bias + the peephole
    LSTM update in one kernel (a power-of-two channel count and a padded one, an odd grid):
    outputs and the gradients of every input within 1e-5 of the PyTorch composition."""
    _interpreted(GATES_CHECK)


def test_faconvlstm_with_the_triton_kernels_equals_the_pytorch_path():
    """The whole cell (with and without squeeze-and-excitation and the dilated branches,
    periodic or not), the mixing kernel and the gate-path kernel once per step: outputs and
    every parameter's gradient equal the PyTorch path's."""
    _interpreted(CELL_CHECK)
