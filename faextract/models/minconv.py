"""Minimal convolutional RNNs: MinConvGRU and MinConvLSTM (Horuz et al., arXiv 2508.03614).

Gates come from a convolution of the *input only* (with the layer's kernel, strides, padding
and dilation, as ConvLSTM2D's input convolution), so the recurrence is linear in h and is
solved over the whole sequence at once (:mod:`faextract.models.scan`):

- MinConvGRU: ``z = sigmoid(k_z)``, ``h_t = (1 - z) h_{t-1} + z g(k_h)``;
- MinConvLSTM: ``f' = sigmoid(f) / (sigmoid(f) + sigmoid(i))``, ``i' = 1 - f'``,
  ``h_t = f' h_{t-1} + i' g(k_h)``; with ``exponential_gating`` (xLSTM-style)
  ``log f' = logsigmoid(f - i)``, ``log i' = log f' - (f - i)``;

with ``g(x) = x + 0.5`` for ``x >= 0`` else ``sigmoid(x)`` (positive, so logs exist).

``scan`` picks the solver: ``"parallel"`` (log-space, one pass), ``"chunked"`` (log-space in
chunks of ``chunk_size`` with the state carried linearly), ``"sequential"`` (linear-space loop),
or ``"auto"``: sequential on CPU (cache-friendly, see scan.py), chunked on other devices. All
agree to float rounding. :meth:`step` advances one timestep for streaming.

Call contract as ConvLSTM2D, except that the state is just ``h``: ``return_state`` gives
``[output, h]`` (as Keras' GRU), and ``initial_state`` takes ``[h]``. ``activation`` and
``recurrent_dropout`` do not apply (the candidate uses g, and the gates never see h).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.layers import glorot_uniform_, same_padding
from faextract.models.recurrent import RecurrentConv2D
from faextract.models.scan import chunked_scan, log_space_scan, sequential_scan

SCANS = ("auto", "parallel", "chunked", "sequential")


def g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class _MinConvRNN(RecurrentConv2D):
    state_size = 1
    n_gates = 2

    def __init__(
        self, filters: int, kernel_size, *args, scan: str = "auto", chunk_size: int = 256, **kwargs
    ):
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        self.scan, self.chunk_size = scan, int(chunk_size)
        super().__init__(filters, kernel_size, *args, **kwargs)
        if self.recurrent_dropout:
            raise ValueError(
                f"recurrent_dropout does not apply to {type(self).__name__}: its gates never see h"
            )

    def _build(self, in_channels: int) -> None:
        (kh, kw), F_ = self.kernel_size, self.filters
        self.kernel = nn.Parameter(torch.empty(self.n_gates * F_, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.zeros(self.n_gates * F_)) if self.use_bias else None
        glorot_uniform_(self.kernel, kh * kw * in_channels, kh * kw * self.n_gates * F_)

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, T, C, H, W) -> (B, T, G*F, H', W')``: one batched conv for all steps."""
        B, T, C, H, W = x.shape
        flat = x.reshape(B * T, C, H, W)
        if self.padding == "same":
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
            t, b = same_padding(H, kh, sh, dh)
            le, r = same_padding(W, kw, sw, dw)
            flat = F.pad(flat, (le, r, t, b))
        k = F.conv2d(flat, self.kernel, self.bias, stride=self.strides, dilation=self.dilation_rate)
        return k.reshape(B, T, *k.shape[1:])

    @abc.abstractmethod
    def _coefficients(self, k: torch.Tensor, log: bool):
        """``(a, b)`` of ``h_t = a h_{t-1} + b`` (or their logs) from gate pre-activations."""

    def _mode(self, device: torch.device) -> str:
        # On CPU the linear-space loop wins at every length measured (benchmarks/bench_scan.py,
        # 2 cores: MinConvGRU at T=192 trains at 189 frames/s with it, 59 with the chunked
        # log-space scan, which streams whole (B, T, ...) tensors through memory a dozen times).
        if self.scan != "auto":
            return self.scan
        return "sequential" if device.type == "cpu" else "chunked"

    def _run(self, x: torch.Tensor, state):
        if self.training and self.dropout > 0:
            keep = 1.0 - self.dropout
            x = x * (
                torch.bernoulli(
                    torch.full((x.shape[0], 1, *x.shape[2:]), keep, device=x.device, dtype=x.dtype)
                )
                / keep
            )
        k = self._gates(x)
        h0 = state[0] if state else None
        mode = self._mode(x.device)
        if mode == "sequential":
            a, b = self._coefficients(k, log=False)
            h = sequential_scan(a, b, h0)
        else:
            log_a, log_b = self._coefficients(k, log=True)
            if mode == "parallel":
                h = log_space_scan(log_a, log_b, h0)
            else:
                h = chunked_scan(log_a, log_b, h0, self.chunk_size)
        return h, [h[:, -1]]

    def step(self, x_t: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """One streaming step: ``x_t (B, C, H, W)`` (channels first) -> ``h_t (B, F, H', W')``."""
        if not self.built:
            self.in_channels = int(x_t.shape[1])
            self._build(self.in_channels)
            self.built = True
        a, b = self._coefficients(self._gates(x_t.unsqueeze(1)), log=False)
        return b[:, 0] if h is None else torch.addcmul(b[:, 0], a[:, 0], h)


class MinConvGRU(_MinConvRNN):
    """Minimal ConvGRU with a parallel scan over time. Gates: z, candidate."""

    n_gates = 2

    def _coefficients(self, k: torch.Tensor, log: bool):
        kz, kh = k.chunk(2, dim=2)
        if log:
            return -F.softplus(kz), -F.softplus(-kz) + log_g(kh)
        z = torch.sigmoid(kz)
        return 1.0 - z, z * g(kh)


class MinConvLSTM(_MinConvRNN):
    """Minimal ConvLSTM with a parallel scan over time. Gates: f, i, candidate."""

    n_gates = 3

    def __init__(
        self, filters: int, kernel_size, *args, exponential_gating: bool = False, **kwargs
    ):
        self.exponential_gating = exponential_gating
        super().__init__(filters, kernel_size, *args, **kwargs)

    def _build(self, in_channels: int) -> None:
        super()._build(in_channels)
        if self.bias is not None and self.unit_forget_bias:
            with torch.no_grad():
                self.bias[: self.filters] = 1.0

    def _log_gates(self, kf: torch.Tensor, ki: torch.Tensor):
        if self.exponential_gating:
            d = kf - ki
            log_f = F.logsigmoid(d)
            return log_f, log_f - d
        # f' = s(f) / (s(f) + s(i))  =>  log f' = -softplus(softplus(-f) - softplus(-i))
        diff = F.softplus(-kf) - F.softplus(-ki)
        return -F.softplus(diff), -F.softplus(-diff)

    def _coefficients(self, k: torch.Tensor, log: bool):
        kf, ki, kh = k.chunk(3, dim=2)
        log_f, log_i = self._log_gates(kf, ki)
        if log:
            return log_f, log_i + log_g(kh)
        return torch.exp(log_f), torch.exp(log_i) * g(kh)
