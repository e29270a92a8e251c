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
or ``"auto"``: sequential on CPU, chunked on other devices. All agree to float rounding. On
CPU in float32 the sequential solver is a C kernel (``kernels/minscan.c``) that computes the
gates and the whole scan in one pass forward and one backward. :meth:`step` advances one
timestep for streaming.

Call contract as ConvLSTM2D, except that the state is just ``h``: ``return_state`` gives
``[output, h]`` (as Keras' GRU), and ``initial_state`` takes ``[h]``. ``activation`` and
``recurrent_dropout`` do not apply (the candidate uses g, and the gates never see h).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models import kernels
from faextract.models.layers import glorot_uniform_
from faextract.models.recurrent import RecurrentConv2D
from faextract.models.scan import chunked_scan, log_space_scan, sequential_scan

SCANS = ("auto", "parallel", "chunked", "sequential")


def g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class _FusedScan(torch.autograd.Function):
    """Coefficients and linear scan in one C pass each way (``kernels/minscan.c``).

    ``k (B, T, G*F, H, W)`` gate pre-activations, contiguous as NCHW or channels-last per step;
    ``h0 (B, F, H, W)`` or None. Returns ``h (B, T, F, H, W)`` in k's layout (kernel reads and
    writes stay contiguous: writing NCHW from channels-last lanes ran ~1.7x slower). The
    backward recomputes the gates from k and reads h, so nothing else is stored.
    """

    @staticmethod
    def forward(ctx, k, h0, mode: int, F_: int):
        B, T, GF, H, W = k.shape
        last = _channels_last(k)
        k = k if last else k.contiguous()
        h = _empty(k, F_, last)
        h0 = None if h0 is None else _layout(h0.unsqueeze(1), last).squeeze(1)
        geometry = _scan_geometry(last, T, GF, F_, H * W)
        kernels.run_rows(
            kernels.library().faex_minscan_forward,
            B * geometry[1],
            k.data_ptr(),
            None if h0 is None else h0.data_ptr(),
            h.data_ptr(),
            mode,
            *geometry,
            work=k.numel(),
        )
        ctx.save_for_backward(k, h0, h)
        ctx.mode, ctx.last = mode, last
        return h

    @staticmethod
    def backward(ctx, dh):
        k, h0, h = ctx.saved_tensors
        B, T, GF, H, W = k.shape
        dh = _layout(dh, ctx.last)
        dk = _empty(k, GF, ctx.last)
        dh0 = torch.empty_like(h0) if h0 is not None and ctx.needs_input_grad[1] else None
        geometry = _scan_geometry(ctx.last, T, GF, h.shape[2], H * W)
        kernels.run_rows(
            kernels.library().faex_minscan_backward,
            B * geometry[1],
            k.data_ptr(),
            None if h0 is None else h0.data_ptr(),
            h.data_ptr(),
            dh.data_ptr(),
            dk.data_ptr(),
            None if dh0 is None else dh0.data_ptr(),
            ctx.mode,
            *geometry,
            work=k.numel(),
        )
        return dk, dh0, None, None


def _channels_last(k: torch.Tensor) -> bool:
    """Whether ``k (B, T, C, H, W)`` is laid out as contiguous ``(B, T, H, W, C)``."""
    return k.shape[2] > 1 and k.permute(0, 1, 3, 4, 2).is_contiguous()


def _layout(t: torch.Tensor, last: bool) -> torch.Tensor:
    """``t (B, T, C, H, W)`` contiguous as NCHW, or as ``(B, T, H, W, C)`` when ``last``."""
    if not last:
        return t.contiguous()
    return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def _empty(like: torch.Tensor, C: int, last: bool) -> torch.Tensor:
    B, T, _, H, W = like.shape
    if last:
        return like.new_empty(B, T, H, W, C).permute(0, 1, 4, 2, 3)
    return like.new_empty(B, T, C, H, W)


def _scan_geometry(last: bool, T: int, GF: int, F_: int, P: int) -> tuple[int, ...]:
    """``(T, nO, nI, kB, kT, kO, kG, hB, hT, hO)`` of minscan.c's lanes (b, o, i)."""
    if last:  # o = pixel, i = channel
        return (T, P, F_, T * P * GF, P * GF, GF, F_, T * P * F_, P * F_, F_)
    return (T, F_, P, T * GF * P, GF * P, P, F_ * P, T * F_ * P, F_ * P, P)


class _MinConvRNN(RecurrentConv2D):
    state_size = 1
    n_gates = 2
    kernel_mode = 0  # minscan.c's mode for these gates

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

    def _gates(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``x (B, T, C, H, W) -> (B, T, G*F, H', W')``: one batched conv for all steps.

        ``channels_last`` (when the C scan takes the result) runs the convolution channels-last,
        oneDNN's native layout: ~1.4x faster than NCHW for this one large convolution and its
        backward on CPU.
        """
        B, T, C, H, W = x.shape
        k = self._input_conv(
            x.reshape(B * T, C, H, W), self.kernel, self.bias, conv_pads=True,
            channels_last=channels_last,
        )
        return k.reshape(B, T, *k.shape[1:])

    @abc.abstractmethod
    def _coefficients(self, k: torch.Tensor, log: bool):
        """``(a, b)`` of ``h_t = a h_{t-1} + b`` (or their logs) from gate pre-activations."""

    def _mode(self, device: torch.device) -> str:
        # On CPU the linear-space loop wins at every length measured (benchmarks/bench_scan.py,
        # 2 cores: the log-space scan streams whole (B, T, ...) tensors through memory a dozen
        # times; the fused C loop reads k and writes h once, 4-5x faster at T=48).
        if self.scan != "auto":
            return self.scan
        return "sequential" if device.type == "cpu" else "chunked"

    def _run(self, x: torch.Tensor, state, need_weights: bool = False):
        masks = self._dropout_masks(self.dropout, (x.shape[0], 1, *x.shape[2:]), x)
        if masks is not None:
            x = x * masks[0]
        h0 = state[0] if state else None
        mode = self._mode(x.device)
        fused = mode == "sequential" and kernels.covers(x, self.kernel, h0)
        k = self._gates(x, channels_last=fused)
        if fused:
            h = _FusedScan.apply(k, h0, self.kernel_mode, self.filters)
        elif mode == "sequential":
            a, b = self._coefficients(k, log=False)
            h = sequential_scan(a, b, h0)
        else:
            log_a, log_b = self._coefficients(k, log=True)
            if mode == "parallel":
                h = log_space_scan(log_a, log_b, h0)
            else:
                h = chunked_scan(log_a, log_b, h0, self.chunk_size)
        return h, [h[:, -1]], []

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

    @property
    def kernel_mode(self) -> int:
        return 2 if self.exponential_gating else 1

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
