"""FAConvLSTM2D: Factorized-Attention ConvLSTM (Nji & Wang, arXiv 2601.10914), a drop-in for
``keras.layers.ConvLSTM2D``.

Same constructor and call contract as :class:`~faextract.models.convlstm.ConvLSTM2D` (replace
the class name and everything downstream keeps working, in every return mode), plus the
paper's components, each of which can be switched off on its own for ablations:

(a) ``factorized`` gates: the input is mixed by a depthwise conv with the layer's geometry
    (kernel, strides, padding, dilation, so output sizes equal ConvLSTM2D's), then
    ``u = 1x1([x_t, h_{t-1}])`` to a ``bottleneck`` of b channels, *shared* depthwise spatial
    mixing of u, and one 1x1 projection b -> 4F to the gates (i, f, c, o). Off: dense k x k
    convolutions as in ConvLSTM2D.
(b) ``multiscale``: extra dilated 3x3 depthwise branches (``dilations``) summed with learned
    per-branch scales; ``se``: squeeze-and-excitation recalibration of the mixed features.
(c) ``peephole``: learned per-channel weights from the cell state to i, f (c_{t-1}) and o (c_t).
(d) ``attention``: axial spatial attention (:class:`~faextract.models.attention.AxialAttention`)
    on h every ``attention_every``-th step (t = 0, k, 2k, ...: ceil(T/k) times per sequence);
    its context is added to h and carried unchanged between refreshes, so it also feeds the
    recurrence. Circular in longitude when ``periodic=True``.
(e) a subspace head: a compact embedding z_t of size ``embedding_dim`` per timestep;
(f) ``temporal_attention`` over z_1..z_T with the fixed seasonal positional code of each
    timestamp's phase in its calendar year (:mod:`faextract.models.seasonal`).

``forward`` returns the ConvLSTM2D outputs; ``forward_features(x, times)`` returns
:class:`FAFeatures` with the embeddings ``(B, T, d)``, the hidden sequence and attention maps.

Defaults (the paper does not fix them):

- ``bottleneck = max(4, filters // 4)``: at filters=64 this makes the gate path ~25x cheaper
  than ConvLSTM2D's dense convolutions while keeping 16 channels of mixing;
- ``dilations = (1, 2, 4)``: receptive fields of 3, 5 and 9 cells per step;
- ``se_reduction = 4``: the bottleneck is already narrow;
- ``attention_every = 4``: a refresh every 4 steps keeps attention at ~1/4 of its per-step cost,
  which is small against the gates; ``attention_heads = 2`` on ``attention_dim = 16`` channels;
  ``attention_position = K`` adds a grid-position code to the attention's queries and keys
  (see :class:`~faextract.models.attention.AxialAttention`; 0 = content and distance only);
  ``attention_locality = False`` drops the learned distance penalty (content-only logits);
- ``embedding_dim = 32``, ``temporal_heads = 4``, ``seasonal_period = 365`` (daily data);
  ``embedding_dim = 0`` drops the head (e.g. for inner layers of a stack); ``embedding_norm``
  ends the head with LayerNorm; ``head_grid`` pools onto a coarse grid that keeps positions
  instead of globally (see :mod:`faextract.models.subspace`); ``head_dropout`` drops pooled
  features before the head's linear map while training.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.attention import AxialAttention, TemporalSelfAttention
from faextract.models.fused import lstm_pointwise, lstm_pointwise_reference, triton_requested
from faextract.models.layers import (
    DepthwiseConv,
    SqueezeExcite,
    get_activation,
    glorot_uniform_,
    orthogonal_,
    pointwise_conv,
    same_padding,
)
from faextract.models.recurrent import CellFeatures, RecurrentConv2D
from faextract.models.seasonal import SeasonalEncoding, phase_from_times
from faextract.models.subspace import SubspaceHead

#: FAConvLSTM2D's features are the common :class:`CellFeatures` with embeddings and maps.
FAFeatures = CellFeatures


class FAConvLSTM2D(RecurrentConv2D):
    """Factorized-Attention ConvLSTM2D. Input ``(B, T, H, W, C)`` (channels_last) or ``(B, T, C, H, W)``."""

    makes_embeddings = True

    # Long by its argument list: Keras ConvLSTM2D's, then FAConvLSTM's own options.
    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "valid",
        data_format: str = "channels_last",
        dilation_rate=1,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        *,
        in_channels: int | None = None,
        factorized: bool = True,
        bottleneck: int | None = None,
        multiscale: bool = True,
        dilations: tuple[int, ...] = (1, 2, 4),
        se: bool = True,
        se_reduction: int = 4,
        peephole: bool = True,
        attention: bool = True,
        attention_every: int = 4,
        attention_heads: int = 2,
        attention_dim: int = 16,
        attention_position: int = 0,
        attention_locality: bool = True,
        periodic: bool = False,
        embedding_dim: int = 32,
        temporal_attention: bool = True,
        temporal_heads: int = 4,
        temporal_causal: bool = False,
        seasonal_period: float = 365.0,
        embedding_norm: bool = True,
        head_grid: tuple[int, int] | None = None,
        head_dropout: float = 0.0,
        head_rank: int = 0,
    ):
        if attention_every < 1:
            raise ValueError(f"attention_every must be >= 1, got {attention_every}")
        self.factorized = factorized
        self.bottleneck = bottleneck if bottleneck is not None else max(4, filters // 4)
        self.multiscale = multiscale
        self.dilations = tuple(int(d) for d in dilations)
        self.se = se
        self.se_reduction = se_reduction
        self.peephole = peephole
        self.attention = attention
        self.attention_every = int(attention_every)
        self.attention_heads = attention_heads
        self.attention_dim = attention_dim
        self.attention_position = int(attention_position)
        self.attention_locality = bool(attention_locality)
        self.periodic = periodic
        self.embedding_dim = embedding_dim
        self.temporal_attention = temporal_attention
        self.temporal_heads = temporal_heads
        self.temporal_causal = temporal_causal
        self.seasonal_period = seasonal_period
        self.embedding_norm = embedding_norm
        self.head_grid = tuple(head_grid) if head_grid else None
        self.head_dropout = float(head_dropout)
        self.head_rank = int(head_rank)
        super().__init__(
            filters,
            kernel_size,
            strides,
            padding,
            data_format,
            dilation_rate,
            activation,
            recurrent_activation,
            use_bias,
            unit_forget_bias,
            dropout,
            recurrent_dropout,
            return_sequences,
            return_state,
            go_backwards,
            stateful,
            in_channels=in_channels,
        )

    # -- parameters -----------------------------------------------------------------------
    def _build(self, in_channels: int) -> None:
        F_, (kh, kw) = self.filters, self.kernel_size
        C, b = in_channels, self.bottleneck
        self.act = get_activation(self.activation_name)
        self.rec_act = get_activation(self.recurrent_activation_name)
        # The default activations have a fused pointwise step (fewer passes over memory).
        self._fused = self.activation_name == "tanh" and self.recurrent_activation_name == "sigmoid"
        if self.factorized:
            # Input spatial mixing with the layer's geometry, then the x-half of the 1x1 bottleneck.
            self.in_dw = nn.Conv2d(
                C,
                C,
                (kh, kw),
                stride=self.strides,
                dilation=self.dilation_rate,
                groups=C,
                bias=False,
            )
            self.x_to_b = nn.Conv2d(C, b, 1, bias=True)
            self.h_to_b = nn.Conv2d(F_, b, 1, bias=False)
            mix_ch = b
            shared_k = max(kh, kw) | 1  # odd, so 'same' is symmetric
            self.shared_dw = DepthwiseConv(b, shared_k, 1, self.periodic)
        else:
            self.kernel = nn.Parameter(torch.empty(4 * F_, C, kh, kw))
            self.recurrent_kernel = nn.Parameter(torch.empty(4 * F_, F_, kh, kw))
            mix_ch = 4 * F_
        if self.multiscale:
            self.branches = nn.ModuleList(
                [DepthwiseConv(mix_ch, 3, d, self.periodic) for d in self.dilations if d > 1]
            )
            self.branch_scale = nn.Parameter(torch.full((len(self.branches),), 0.5))
        if self.se:
            self.se_block = SqueezeExcite(mix_ch, self.se_reduction)
        if self.factorized:
            self.b_to_gates = nn.Conv2d(b, 4 * F_, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * F_)) if self.use_bias else None
        if self.peephole:
            self.peep = nn.Parameter(torch.zeros(3, F_, 1, 1))  # i, f, o
        if self.attention:
            self.axial = AxialAttention(
                F_, self.attention_dim, self.attention_heads, self.periodic, self.attention_position,
                self.attention_locality,
            )
        if self.embedding_dim:
            self.head = SubspaceHead(F_, self.embedding_dim, self.embedding_norm, self.head_grid,
                                     self.head_dropout, self.head_rank)  # fmt: skip
            self.seasonal = SeasonalEncoding(self.embedding_dim, self.seasonal_period)
            if self.temporal_attention:
                self.temporal = TemporalSelfAttention(
                    self.embedding_dim, self.temporal_heads, causal=self.temporal_causal
                )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        F_, (kh, kw) = self.filters, self.kernel_size
        if not self.factorized:
            C = self.kernel.shape[1]
            glorot_uniform_(self.kernel, kh * kw * C, kh * kw * 4 * F_)
            with torch.no_grad():
                self.recurrent_kernel.copy_(orthogonal_((kh, kw, F_, 4 * F_)).permute(3, 2, 0, 1))
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()
                if self.unit_forget_bias:
                    self.bias[F_ : 2 * F_] = 1.0

    # -- computation ----------------------------------------------------------------------
    def _mix(self, u: torch.Tensor) -> torch.Tensor:
        """Spatial mixing of the gate features ``(N, ch, H, W)``: with ``FAEXTRACT_TRITON=1`` on
        CUDA (and under Triton's interpreter) the shared and dilated stencils and the squeeze-
        and-excitation sums in one kernel (:mod:`faextract.models.triton_mix`)."""
        if self._triton_covers(u):
            m, gains = self._mix_triton(u)
            return m if gains is None else m * gains[:, :, None, None].to(m.dtype)
        m = self.shared_dw(u) if self.factorized else u
        if self.multiscale:
            for s, branch in zip(self.branch_scale, self.branches, strict=True):
                m = m + s * branch(u)
        if self.se:
            m = self.se_block(m)
        return m

    def _triton_covers(self, u: torch.Tensor) -> bool:
        """Whether the factorized gate path runs as Triton kernels for ``u``: CUDA tensors with
        triton installed and ``FAEXTRACT_TRITON=1`` (CPU ones under Triton's interpreter), see
        :func:`~faextract.models.triton_step.covers`."""
        if not self.factorized or not triton_requested():
            return False
        if not (u.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            return False
        from faextract.models import triton_mix  # imports triton: only where it may run

        return triton_mix.mix_covers(u)

    def _mix_triton(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(m, squeeze-and-excitation gains (N, b) or None)``: the mixing as one kernel."""
        from faextract.models import triton_mix

        if self.multiscale:  # the branches exist for the dilations > 1, in order
            weights, scales = [b.conv.weight for b in self.branches], self.branch_scale
            dilations = tuple(d for d in self.dilations if d > 1)
        else:
            weights, scales, dilations = [], [], ()
        m, total = triton_mix.multiscale_mix(
            u, self.shared_dw.conv.weight, weights, scales, dilations, self.periodic
        )
        if not self.se:
            return m, None
        mean = (total / (u.shape[-2] * u.shape[-1]))[:, :, None, None]
        return m, self.se_block.gains(mean).flatten(1)

    def _step(self, xin_t: torch.Tensor, hr: torch.Tensor, c: torch.Tensor):
        """One update ``(h, c)`` from the input's share of the gates ``xin_t`` and ``h_{t-1}``."""
        peep = self.peep if self.peephole else None
        if self.factorized:
            u = xin_t + pointwise_conv(hr, self.h_to_b.weight)
            if self._fused and self._triton_covers(u):
                # mixing, then gains x projection x bias x LSTM update: two kernels a step
                from faextract.models.triton_gates import gates_lstm

                m, gains = self._mix_triton(u)
                if gains is None:
                    gains = torch.ones(m.shape[:2], device=m.device)
                weight = self.b_to_gates.weight.flatten(1)  # (4F, b)
                return gates_lstm(m, gains, weight, self.bias, peep, c)
            z = pointwise_conv(self._mix(u), self.b_to_gates.weight)
        else:
            kh, kw = self.kernel_size
            pt, pb = same_padding(hr.shape[-2], kh, 1, 1)
            pl, pr = same_padding(hr.shape[-1], kw, 1, 1)
            z = self._mix(xin_t + F.conv2d(F.pad(hr, (pl, pr, pt, pb)), self.recurrent_kernel))
        if self._fused:  # the gate bias is added inside the fused step (one pass less)
            return lstm_pointwise(z, c, peep, self.bias)
        return lstm_pointwise_reference(z, c, peep, self.bias, self.act, self.rec_act)

    def _run(self, x: torch.Tensor, state, need_weights: bool = False):
        B, T, C, H, W = x.shape
        F_ = self.filters
        Ho, Wo = self.output_size(H, W)
        (in_mask,) = self._dropout_masks(self.dropout, (B, 1, C, H, W), x) or (None,)
        if in_mask is not None:
            x = x * in_mask
        flat = x.reshape(B * T, C, H, W)
        # Input half of the gates for all timesteps at once (one batched conv, not T small ones).
        if self.factorized:
            xin = pointwise_conv(
                self._input_conv(flat, self.in_dw), self.x_to_b.weight, self.x_to_b.bias
            ).reshape(B, T, self.bottleneck, Ho, Wo)
        else:
            xin = self._input_conv(flat, self.kernel).reshape(B, T, 4 * F_, Ho, Wo)
        if state is None or len(state) < 2:
            h = x.new_zeros(B, F_, Ho, Wo)
            c = x.new_zeros(B, F_, Ho, Wo)
            ctx, step = None, 0
        else:
            h, c = state[0], state[1]
            ctx = state[2] if len(state) > 2 else None
            step = int(state[3]) if len(state) > 3 else 0
        (rec_mask,) = self._dropout_masks(self.recurrent_dropout, (B, F_, Ho, Wo), x) or (None,)
        outs, maps = [], []
        for t, xin_t in enumerate(xin.unbind(1)):  # unbind: no per-step full-size grads
            hr = h * rec_mask if rec_mask is not None else h
            h, c = self._step(xin_t, hr, c)
            if self.attention:
                if (step + t) % self.attention_every == 0:
                    ctx, w = self.axial(h, need_weights=need_weights)
                    if need_weights:
                        maps.append((t, w))
                h = h + ctx
            outs.append(h)
        return torch.stack(outs, dim=1), [h, c, ctx, step + T], maps

    @property
    def attention_layout(self) -> tuple[int, int] | None:
        return (self.attention_every, self.attention_heads) if self.attention else None

    def forward_features(
        self,
        x: torch.Tensor,
        times=None,
        initial_state=None,
        *,
        valid: torch.Tensor | None = None,
        step_valid: torch.Tensor | None = None,
        calendar: str = "standard",
        need_weights: bool = True,
    ) -> CellFeatures:
        """Outputs plus embeddings and attention maps.

        times: per-step phases ``(T,)``/``(B, T)`` in [0, 1), or datetime64/cftime timestamps
            (with ``calendar``); None uses ``step / seasonal_period``.
        valid: ``(B, T, H', W')`` cells to pool over in the subspace head (default all).
        step_valid: ``(B, T)`` False for padded steps, which temporal attention ignores.
        """
        x, state = self._prepare(x, initial_state)
        B, T = x.shape[:2]
        offset = int(state[3]) if state is not None and len(state) > 3 else 0
        hseq, last, maps = self._run(x, state, need_weights=need_weights)
        output = self._outputs(hseq, last)
        if not self.embedding_dim:
            return CellFeatures(output, hseq, None, None, maps, None, last)
        raw = self.head(hseq, valid)
        phase = None if times is None else phase_from_times(times, calendar).to(x.device)
        if phase is not None and self.go_backwards:
            phase = phase.flip(-1)
        z, tw = raw, None
        if self.temporal_attention:
            pos = self.seasonal(phase, B, T, x.device, offset)
            pad = None if step_valid is None else ~step_valid.bool()
            z, tw = self.temporal(raw, pos.to(raw.dtype), pad)
        return CellFeatures(output, hseq, z, raw, maps, tw, last)
