"""The Triton LSTM step against the PyTorch reference, run by Triton's interpreter on the CPU
(a subprocess: ``TRITON_INTERPRET=1`` must be set before the kernels are defined)."""

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


def test_triton_lstm_step_matches_the_reference_forward_and_backward():
    """fp32, with and without peepholes and bias, a 16x16 grid and an odd 5x7 one: outputs and
    the gradients of z, c, peepholes and bias within 1e-5 of the PyTorch reference."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
