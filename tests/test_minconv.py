"""Parallel-scan minimal conv RNNs: every solver agrees, states carry, long T stays finite."""

from __future__ import annotations

import pytest
import torch

from faextract.models import MinConvGRU, MinConvLSTM, create_cell
from faextract.models.scan import chunked_scan, log_space_scan, sequential_scan

CELLS = [
    ("minconvgru", {}),
    ("minconvlstm", {}),
    ("minconvlstm", {"exponential_gating": True}),
]


def _cell(name, kw, scan, dtype=torch.float32, chunk=7):
    torch.manual_seed(0)
    cell = create_cell(
        name,
        filters=4,
        kernel_size=3,
        padding="same",
        return_sequences=True,
        in_channels=3,
        scan=scan,
        chunk_size=chunk,
        **kw,
    )
    return cell.to(dtype)


@pytest.mark.parametrize("name,kw", CELLS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_parallel_equals_sequential_equals_chunked_float64(name, kw, with_h0):
    x = torch.randn(2, 30, 6, 5, 3, dtype=torch.float64)
    h0 = [torch.randn(2, 6, 5, 4, dtype=torch.float64)] if with_h0 else None
    outs = {
        s: _cell(name, kw, s, torch.float64)(x, initial_state=h0)
        for s in ("parallel", "sequential", "chunked")
    }
    torch.testing.assert_close(outs["parallel"], outs["sequential"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(outs["chunked"], outs["sequential"], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("T", [16, 256, 1024])
def test_float32_error_scales_with_t(T):
    torch.manual_seed(0)
    log_a = -torch.nn.functional.softplus(torch.randn(1, T, 8))
    log_b = -torch.nn.functional.softplus(-torch.randn(1, T, 8))
    ref = sequential_scan(log_a.double().exp(), log_b.double().exp())
    got = log_space_scan(log_a, log_b)
    tol = 2e-6 * max(1.0, T / 16)
    torch.testing.assert_close(got.double(), ref, atol=tol, rtol=tol)


def test_chunks_carry_state_through_h_not_log_g():
    torch.manual_seed(1)
    log_a = -torch.nn.functional.softplus(torch.randn(2, 50, 3)).double()
    log_b = torch.randn(2, 50, 3).double()
    h0 = torch.randn(2, 3).double()  # negative entries: a log of the state would fail
    one = log_space_scan(log_a, log_b, h0)
    for chunk in (1, 7, 25, 49):
        torch.testing.assert_close(chunked_scan(log_a, log_b, h0, chunk), one)


@pytest.mark.parametrize("name,kw", CELLS)
def test_split_sequence_with_initial_state_equals_one_pass(name, kw):
    cell = _cell(name, kw, "parallel", torch.float64)
    cell.return_state = True
    x = torch.randn(1, 20, 5, 5, 3, dtype=torch.float64)
    full, h = cell(x)
    a, h1 = cell(x[:, :9])
    b, h2 = cell(x[:, 9:], initial_state=[h1])
    torch.testing.assert_close(torch.cat([a, b], dim=1), full)
    torch.testing.assert_close(h2, h)


@pytest.mark.parametrize("name,kw", CELLS)
def test_step_mode_equals_whole_sequence(name, kw):
    cell = _cell(name, kw, "parallel", torch.float64)
    cell.data_format = "channels_first"
    x = torch.randn(2, 10, 3, 5, 5, dtype=torch.float64)
    full = cell(x)
    h = None
    for t in range(10):
        h = cell.step(x[:, t], h)
        torch.testing.assert_close(h, full[:, t])


@pytest.mark.parametrize("name,kw", CELLS)
def test_long_sequences_and_extreme_gates_stay_finite(name, kw):
    cell = _cell(name, kw, "chunked", chunk=512)
    with torch.no_grad():
        cell.kernel.mul_(50.0)  # saturate every gate
    x = torch.randn(1, 4096, 2, 2, 3) * 10
    out = cell(x)
    assert torch.isfinite(out).all()
    assert torch.isfinite(_cell(name, kw, "parallel")(x)).all()


@pytest.mark.parametrize("name,kw", CELLS)
def test_gradients_equal_between_modes(name, kw):
    x = torch.randn(1, 12, 4, 4, 3, dtype=torch.float64)
    grads = {}
    for scan in ("parallel", "sequential", "chunked"):
        cell = _cell(name, kw, scan, torch.float64)
        cell(x).square().sum().backward()
        grads[scan] = cell.kernel.grad
    torch.testing.assert_close(grads["parallel"], grads["sequential"])
    torch.testing.assert_close(grads["chunked"], grads["sequential"])


def test_contract():
    for cls in (MinConvGRU, MinConvLSTM):
        layer = cls(4, 3, padding="same", return_state=True, in_channels=2)
        out, h = layer(torch.randn(2, 5, 6, 6, 2))
        assert out.shape == h.shape == (2, 6, 6, 4)
        with pytest.raises(ValueError, match="recurrent_dropout"):
            cls(4, 3, recurrent_dropout=0.1)


def test_auto_scan_is_sequential_on_cpu_and_chunked_elsewhere():
    cell = MinConvGRU(4, 3, padding="same", in_channels=2)
    assert cell._mode(torch.device("cpu")) == "sequential"
    assert cell._mode(torch.device("cuda")) == "chunked"
    assert MinConvGRU(4, 3, scan="parallel", in_channels=2)._mode(torch.device("cpu")) == "parallel"
