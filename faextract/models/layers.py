"""Small building blocks shared by the recurrent cells: Keras activations, TF-style padding,
Keras initializers, and spatial padding that is circular in longitude only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models import kernels


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
    x: torch.Tensor, pads: tuple[int, int, int, int], periodic: bool = False
) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` by ``(left, right, top, bottom)``: zeros in lat, circular in lon if asked."""
    left, right, top, bottom = pads
    if periodic and (left or right):
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


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """A 1x1 convolution ``(N, C, H, W) -> (N, O, H, W)``, ``weight (O, C, 1, 1)``.

    On the CPU it runs as one batched matrix product: oneDNN reorders NCHW tensors to its
    blocked layout and back around a 1x1 convolution, which cost more than the product itself
    at the cells' sizes (16 -> 256 channels on 4 x 64 x 64: 2.7 vs ~10 ms forward+backward).
    """
    if x.device.type != "cpu":
        return F.conv2d(x, weight, bias)
    N, C, H, W = x.shape
    Co = weight.shape[0]
    w = weight.reshape(1, Co, C).expand(N, Co, C)
    x3 = x.reshape(N, C, H * W)
    if bias is None:
        return torch.bmm(w, x3).reshape(N, Co, H, W)
    b = bias.reshape(1, Co, 1).expand(N, Co, H * W)
    return torch.baddbmm(b, w, x3).reshape(N, Co, H, W)


def _depthwise_c(x: torch.Tensor, w: torch.Tensor, padding, dilation: int, out_hw) -> torch.Tensor:
    """The C kernel: stride-1 depthwise convolution of contiguous float32 ``x (N, C, H, W)``."""
    lib = kernels.library()
    N, C, H, W = x.shape
    kh, kw = w.shape[-2:]
    x, w = x.contiguous(), w.contiguous()
    y = x.new_empty(N, C, *out_hw)
    sizes = (C, H, W, *out_hw, kh, kw, dilation, *padding)
    ptrs = (x.data_ptr(), w.data_ptr(), y.data_ptr())
    kernels.run_rows(lib.faex_depthwise_forward, N * C, *ptrs, *sizes, work=y.numel())
    return y


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor, padding, dilation: int) -> torch.Tensor:
    """Stride-1 depthwise convolution ``(N, C, H, W) -> (N, C, H', W')``, ``w (C, 1, kh, kw)``,
    zero ``padding (ph, pw)`` on both sides: ``F.conv2d(..., groups=C)``, faster on the CPU."""
    if x.device.type == "cpu":
        # The Function's backward runs outside autocast: give it one dtype, the one autocast
        # would have computed the convolution in.
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, w = x.to(dtype), w.to(dtype)
        elif w.dtype != x.dtype:
            w = w.to(x.dtype)
        return _DepthwiseConv.apply(x, w, tuple(padding), int(dilation))
    return F.conv2d(x, w, padding=padding, dilation=dilation, groups=x.shape[1])


class _DepthwiseConv(torch.autograd.Function):
    """Stride-1 depthwise convolution with a backward written out for the CPU.

    PyTorch's CPU depthwise convolution (oneDNN) reorders NCHW planes around the product and
    its backward ran 8-15x slower than its forward at the cells' sizes. Both gradients are
    depthwise convolutions again: the input gradient is the output gradient convolved with the
    flipped kernel, the weight gradient each input plane correlated with its output-gradient
    plane. With the C kernels all three run as plain loops over the planes.
    """

    @staticmethod
    def forward(ctx, x, w, padding, dilation):
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.dilation = padding, dilation
        kh, kw = w.shape[-2:]
        out_hw = (
            x.shape[-2] + 2 * padding[0] - (kh - 1) * dilation,
            x.shape[-1] + 2 * padding[1] - (kw - 1) * dilation,
        )
        if kernels.covers(x, w):
            return _depthwise_c(x, w, padding, dilation, out_hw)
        return F.conv2d(x, w, padding=padding, dilation=dilation, groups=x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        (ph, pw), d = ctx.padding, ctx.dilation
        N, C = x.shape[:2]
        kh, kw = w.shape[-2:]
        Ho, Wo = g.shape[-2:]
        fast = kernels.covers(x, w, g)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            full = ((kh - 1) * d - ph, (kw - 1) * d - pw)
            if fast:
                gx = _depthwise_c(g, w.flip(-1, -2), full, d, x.shape[-2:])
            else:
                gx = F.conv2d(g, w.flip(-1, -2), padding=full, dilation=d, groups=C)
        if ctx.needs_input_grad[1]:
            # gw[c, i, j] = sum_n,y,x xpad[n, c, y + i d, x + j d] g[n, c, y, x]
            if fast:
                # Hold the contiguous copies until the kernel returns: a temporary whose address
                # alone is passed is freed at once, and the kernel's own buffer could reuse it.
                lib, x, g = kernels.library(), x.contiguous(), g.contiguous()
                planes = torch.empty(N * C, kh * kw, dtype=torch.float64)
                sizes = (*x.shape[-2:], Ho, Wo, kh, kw, d, ph, pw)
                ptrs = (x.data_ptr(), g.data_ptr(), planes.data_ptr())
                kernels.run_rows(
                    lib.faex_depthwise_weight_grad, N * C, *ptrs, *sizes, work=g.numel()
                )
                gw = planes.view(N, C, kh, kw).sum(0).to(w.dtype).view_as(w)
            else:  # each input plane correlated with its output-gradient plane as the kernel
                planes = F.conv2d(
                    x.reshape(1, N * C, *x.shape[-2:]),
                    g.reshape(N * C, 1, Ho, Wo),
                    stride=d,
                    padding=(ph, pw),
                    groups=N * C,
                )
                gw = planes.view(N, C, kh, kw).sum(0).view_as(w)
        return gx, gw, None, None


class DepthwiseConv(nn.Module):
    """Depthwise 'same' convolution ``(N, C, H, W) -> (N, C, H, W)``, circular in lon if periodic."""

    def __init__(
        self, channels: int, kernel_size: int = 3, dilation: int = 1, periodic: bool = False
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, dilation=dilation, groups=channels, bias=False
        )
        self.pad = (kernel_size - 1) * dilation
        self.periodic = periodic
        if self.pad % 2 == 0:  # symmetric: let the convolution zero-pad (no padded copy)
            self.conv.padding = (self.pad // 2, 0 if periodic else self.pad // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad // 2, self.pad - self.pad // 2
        if self.pad % 2 == 0:
            if self.periodic and p0:
                x = pad_spatial(x, (p0, p1, 0, 0), True)
        else:
            x = pad_spatial(x, (p0, p1, p0, p1), self.periodic)
        return depthwise_conv2d(x, self.conv.weight, self.conv.padding, self.conv.dilation[0])


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gains from the spatial mean. ``(N, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(2, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gains(x.mean(dim=(2, 3), keepdim=True))

    def gains(self, mean: torch.Tensor) -> torch.Tensor:
        """``(N, C, 1, 1)`` channel gains from the spatial mean ``(N, C, 1, 1)``."""
        # SiLU, not ReLU: with a handful of hidden units a dead ReLU would silence the block.
        return torch.sigmoid(self.fc2(F.silu(self.fc1(mean))))
