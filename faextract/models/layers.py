"""Small building blocks shared by the recurrent cells: Keras activations, TF-style padding,
Keras initializers, and spatial padding that is circular in longitude only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _tf1_hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow <= 2.14 default recurrent activation: clip(0.2 x + 0.5, 0, 1).
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    # Keras 3 defines hard_sigmoid as relu6(x + 3) / 6, which is torch's hardsigmoid.
    "hard_sigmoid": F.hardsigmoid,
    "hard_sigmoid_tf1": _tf1_hard_sigmoid,
    "relu": torch.relu,
    "relu6": F.relu6,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "exponential": torch.exp,
    "linear": lambda x: x,
    None: lambda x: x,
}


def get_activation(name) -> Callable[[torch.Tensor], torch.Tensor]:
    """A Keras activation by name (or a callable, returned as is)."""
    if callable(name):
        return name
    key = name.lower() if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose from {sorted(k for k in ACTIVATIONS if k)}"
        )
    return ACTIVATIONS[key]


def pair(v, name: str = "value") -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after): the extra cell goes after, as in Keras."""
    eff = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    eff = (kernel - 1) * dilation + 1
    return (size - eff) // stride + 1


def pad_spatial(
    x: torch.Tensor, pads: tuple[int, int, int, int], periodic_lon: bool = False
) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` by ``(left, right, top, bottom)``: zeros in lat, circular in lon if asked."""
    left, right, top, bottom = pads
    if periodic_lon and (left or right):
        parts = [x[..., x.shape[-1] - left :]] if left else []
        parts += [x, x[..., :right]] if right else [x]
        x = torch.cat(parts, dim=-1)
        left = right = 0
    if left or right or top or bottom:
        x = F.pad(x, (left, right, top, bottom))
    return x


def glorot_uniform_(w: torch.Tensor, fan_in: int, fan_out: int, generator=None) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        w.uniform_(-limit, limit, generator=generator)


def orthogonal_(w_keras_shape: tuple[int, ...], generator=None) -> torch.Tensor:
    """Keras' Orthogonal initializer for a kernel of Keras shape ``(..., cols)``."""
    rows = math.prod(w_keras_shape[:-1])
    cols = w_keras_shape[-1]
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if rows < cols:
        q = q.T
    return q.reshape(w_keras_shape)


class DepthwiseConv(nn.Module):
    """Depthwise 'same' convolution ``(N, C, H, W) -> (N, C, H, W)``, circular in lon if periodic."""

    def __init__(
        self, channels: int, kernel_size: int = 3, dilation: int = 1, periodic_lon: bool = False
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, dilation=dilation, groups=channels, bias=False
        )
        self.pad = (kernel_size - 1) * dilation
        self.periodic_lon = periodic_lon
        if self.pad % 2 == 0:  # symmetric: let the convolution zero-pad (no padded copy)
            self.conv.padding = (self.pad // 2, 0 if periodic_lon else self.pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad // 2, self.pad - self.pad // 2
        if self.pad % 2 == 0:
            if self.periodic_lon and p0:
                x = pad_spatial(x, (p0, p1, 0, 0), True)
            return self.conv(x)
        return self.conv(pad_spatial(x, (p0, p1, p0, p1), self.periodic_lon))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gains from the spatial mean. ``(N, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(2, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        # SiLU, not ReLU: with a handful of hidden units a dead ReLU would silence the block.
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))
