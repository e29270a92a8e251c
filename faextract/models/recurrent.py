"""The Keras ConvLSTM2D call contract, shared by every recurrent conv layer in faextract.

:class:`RecurrentConv2D` owns what is the same for ConvLSTM2D, FAConvLSTM2D and the
parallel-scan cells: Keras argument names and defaults, both data formats, ``go_backwards``,
``return_sequences`` / ``return_state``, ``initial_state`` and ``stateful``, lazy inference of
the input channel count, output sizes for 'valid'/'same' padding with strides and dilation,
the input convolution with that padding, and dropout masks. Subclasses implement
``_build(in_channels)`` and ``_run(x, state, need_weights)`` on ``(B, T, C, H, W)``.

Besides the Keras call, every cell answers :meth:`RecurrentConv2D.forward_features` with a
:class:`CellFeatures` (the hidden sequence; FAConvLSTM2D adds its embeddings and attention
maps), so that the encoder asks a cell what it produced and never checks its type.

Outputs (as Keras):

- ``return_sequences=False``: the last output ``(B, H', W', F)`` (``(B, F, H', W')`` channels_first);
- ``return_sequences=True``: ``(B, T, H', W', F)`` (``(B, T, F, H', W')``);
- ``return_state=True``: ``[output, h, c]`` with ``h``, ``c`` shaped like one step's output.

With ``go_backwards`` the sequence is processed in reverse and returned in processing order,
as Keras does.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.layers import conv_output_size, pair, same_padding


@dataclass
class CellFeatures:
    """What :meth:`RecurrentConv2D.forward_features` returns.

    output: what ``forward`` returns (Keras contract).
    hidden: ``(B, T, F, H', W')`` hidden states, channels first, in processing order.
    embeddings: ``(B, T, d)`` per-step embeddings for cells that make them (else None);
        ``raw_embeddings`` before temporal attention.
    attention: ``(step, AxialWeights)`` for each step where spatial attention ran.
    temporal_weights: ``(B, T, T)`` temporal attention (averaged over heads) or None.
    state: the final state list.
    """

    output: object
    hidden: torch.Tensor
    embeddings: torch.Tensor | None = None
    raw_embeddings: torch.Tensor | None = None
    attention: list = field(default_factory=list)
    temporal_weights: torch.Tensor | None = None
    state: list = field(default_factory=list)


class RecurrentConv2D(nn.Module, abc.ABC):
    """Base class with the ConvLSTM2D constructor and call contract."""

    #: True for cells that make the per-step embedding themselves (they take
    #: ``embedding_dim``, ``seasonal_period``, ``embedding_norm``, ``head_grid``,
    #: ``head_dropout``, ``head_rank``, ``periodic``).
    makes_embeddings = False

    #: ``(k, heads)`` when the cell returns spatial attention maps every k-th step (see
    #: :class:`~faextract.models.faconvlstm.FAConvLSTM2D`); None for cells without attention.
    attention_layout: tuple[int, int] | None = None

    #: Number of tensors in the Keras-visible state (h, c).
    state_size = 2

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
    ):
        super().__init__()
        padding = padding.lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"data_format must be channels_last or channels_first, got {data_format!r}"
            )
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.dilation_rate = pair(dilation_rate, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError("strides > 1 and dilation_rate > 1 cannot be combined (as in Keras)")
        if not (0.0 <= dropout < 1.0 and 0.0 <= recurrent_dropout < 1.0):
            raise ValueError("dropout and recurrent_dropout must be in [0, 1)")
        self.padding = padding
        self.data_format = data_format
        self.activation_name = activation
        self.recurrent_activation_name = recurrent_activation
        self.use_bias = use_bias
        self.unit_forget_bias = unit_forget_bias
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.stateful = stateful
        self.in_channels = in_channels
        self._states: list[torch.Tensor] | None = None
        # dtype and device asked for (.double(), .to(...)) before the parameters exist
        self._pending: tuple[torch.dtype, torch.device] | None = None
        self.built = False
        if in_channels is not None:
            self._build(int(in_channels))
            self.built = True

    # -- to implement ---------------------------------------------------------------------
    @abc.abstractmethod
    def _build(self, in_channels: int) -> None:
        """Create the parameters once the input channel count is known."""

    @abc.abstractmethod
    def _run(self, x: torch.Tensor, state: list[torch.Tensor] | None, need_weights: bool = False):
        """``x (B, T, C, H, W)`` -> ``(hseq (B, T, F, H', W'), last_state list, maps)``;
        ``maps``: ``(step, weights)`` of spatial attention (empty for cells without it)."""

    # -- the contract ---------------------------------------------------------------------
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.kernel_size
        sh, sw = self.strides
        dh, dw = self.dilation_rate
        return (
            conv_output_size(h, kh, sh, dh, self.padding),
            conv_output_size(w, kw, sw, dw, self.padding),
        )

    # -- shared by the cells ----------------------------------------------------------------
    def _same_padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` of Keras' 'same' for the layer's kernel, strides and
        dilation on an ``h x w`` input; zeros for 'valid'."""
        if self.padding != "same":
            return (0, 0, 0, 0)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        t, b = same_padding(h, kh, sh, dh)
        le, r = same_padding(w, kw, sw, dw)
        return (le, r, t, b)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` padded for the input convolution ('same': Keras' split, the extra
        cell at the end)."""
        pad = self._same_padding(x.shape[-2], x.shape[-1])
        return F.pad(x, pad) if any(pad) else x

    def _input_conv(
        self, x: torch.Tensor, weight, bias=None, *, conv_pads: bool = False,
        channels_last: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """The input convolution ``(N, C, H, W) -> (N, G, H', W')`` with the layer's padding,
        strides and dilation. ``weight`` may be a module (applied to the padded input).
        ``conv_pads`` lets the convolution pad a symmetric 'same' itself (no padded copy);
        ``channels_last`` runs it in oneDNN's native layout (faster on CPU for one large
        convolution and its backward)."""
        if isinstance(weight, nn.Module):
            return weight(self._pad(x))
        padding = (0, 0)
        le, r, t, b = self._same_padding(x.shape[-2], x.shape[-1])
        if conv_pads and (t, le) == (b, r):
            padding = (t, le)
        else:
            x = self._pad(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(
            x, weight, bias, stride=self.strides, padding=padding, dilation=self.dilation_rate
        )

    def _dropout_masks(self, rate: float, shape, like: torch.Tensor, n: int = 1):
        """``n`` inverted-dropout masks of ``shape`` (one per gate in Keras' ConvLSTM2D), or
        None outside training or at rate 0: the same mask for every time step."""
        if not (self.training and rate > 0):
            return None
        keep = 1.0 - rate
        return [
            torch.bernoulli(torch.full(shape, keep, device=like.device, dtype=like.dtype)) / keep
            for _ in range(n)
        ]

    def reset_states(self) -> None:
        self._states = None

    def _to_cf(self, x: torch.Tensor) -> torch.Tensor:
        """Input to ``(B, T, C, H, W)``."""
        if x.dim() != 5:
            raise ValueError(f"expected a 5-D input (B, T, ...), got shape {tuple(x.shape)}")
        return x.permute(0, 1, 4, 2, 3) if self.data_format == "channels_last" else x

    def _from_cf(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, [T,] F, H, W)`` to the layer's data format."""
        if self.data_format == "channels_first":
            return y
        return y.permute(0, 1, 3, 4, 2) if y.dim() == 5 else y.permute(0, 2, 3, 1)

    def _prepare(self, x: torch.Tensor, initial_state) -> tuple[torch.Tensor, list | None]:
        x = self._to_cf(x)
        if not self.built:
            self.in_channels = int(x.shape[2])
            self._build(self.in_channels)
            self.built = True
            # As torch's lazy modules: parameters built late take the dtype and device the
            # module was moved to before (or the input's device when it was not moved).
            if self._pending is not None:
                dtype, device = self._pending
                self.to(device=device, dtype=dtype)
            else:
                self.to(device=x.device)
        elif x.shape[2] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[2]}")
        if self.go_backwards:
            x = x.flip(1)
        state = None
        if initial_state is not None:
            state = [self._to_cf_state(s) for s in initial_state]
        elif self.stateful and self._states is not None:
            state = self._states
        return x, state

    def _apply(self, fn, *args, **kwargs):
        if not self.built:  # remember what fn does to a float tensor, for the build
            probe = fn(torch.empty(0))
            self._pending = (probe.dtype, probe.device)
        return super()._apply(fn, *args, **kwargs)

    def _to_cf_state(self, s):
        if not torch.is_tensor(s) or s.dim() != 4:
            return s
        return s.permute(0, 3, 1, 2) if self.data_format == "channels_last" else s

    def _outputs(self, hseq: torch.Tensor, last: list[torch.Tensor]):
        if self.stateful:
            self._states = [s.detach() if torch.is_tensor(s) else s for s in last]
        out = self._from_cf(hseq) if self.return_sequences else self._from_cf(hseq[:, -1])
        if self.return_state:
            return [out] + [self._from_cf(s) for s in last[: self.state_size]]
        return out

    def forward(self, x: torch.Tensor, initial_state=None):
        """Keras-compatible call; see the module docstring for shapes."""
        x, state = self._prepare(x, initial_state)
        hseq, last, _ = self._run(x, state)
        return self._outputs(hseq, last)

    def forward_features(
        self,
        x: torch.Tensor,
        times=None,
        initial_state=None,
        *,
        valid: torch.Tensor | None = None,
        step_valid: torch.Tensor | None = None,
        calendar: str = "standard",
        need_weights: bool = False,
    ) -> CellFeatures:
        """The call's output plus the hidden sequence (and, in cells that make them, embeddings
        and attention maps). ``times``, ``valid``, ``step_valid`` and ``calendar`` are for
        such cells (see :meth:`FAConvLSTM2D.forward_features`); here they are unused."""
        x, state = self._prepare(x, initial_state)
        hseq, last, maps = self._run(x, state, need_weights=need_weights)
        return CellFeatures(self._outputs(hseq, last), hseq, attention=maps, state=last)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.filters}, kernel_size={self.kernel_size}, strides={self.strides}, "
            f"padding={self.padding!r}, dilation_rate={self.dilation_rate}, data_format={self.data_format!r}"
        )
