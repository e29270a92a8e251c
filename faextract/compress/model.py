"""The learned codec's network, after CAESAR-V (Li, Lee, Rangarajan & Ranka, arXiv 2412.17184):
a variational autoencoder over blocks of frames with a mean-scale hyperprior and a
super-resolution decoder.

One variable at a time, a block ``x (B, T, H, W)`` (normalized per block; ``T`` a multiple of 4,
``H`` and ``W`` multiples of 16: the container pads, periodic in longitude, reflected in
latitude) flows::

    encoder  per frame: 3x3 conv -> 16 ch; [ResBlock, stride-2 conv] x 2          (H/4, 48 ch)
             3-D:       [ResBlock 3-D, stride-2 conv3d in t, y, x] x 2         (T/4, H/16, 64 ch)
    y = latent (B, 64, T/4, H/16, W/16); z = hyper-encoder(y) (B, 64, T/4, H/64, W/64)
    hyper-decoder(z^) -> mean, scale of y (a Gaussian per element);  z has a factorized prior
    decoder  [transposed conv3d x2] -> (T, H/4, 48 ch) -> ResBlock (32 ch) per frame
             -> super-resolution: ConvNeXt blocks + pixel shuffle x4 -> x^ (B, T, H, W)

Training rounds nothing: uniform noise in [-0.5, 0.5) stands in for rounding (Balle et al.
2018), and the rate is ``-log2`` of the likelihoods. :func:`rate_distortion` is the loss.
Shapes: ``(B, T, H, W)`` for blocks, ``(B, C, T, h, w)`` inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Scales below this carry no information worth coding (CAESAR clamps at 0.1).
MIN_SCALE = 0.11


class ResBlock(nn.Module):
    """``x + conv(GELU(conv(x)))`` with 3-wide 'same' convolutions: ``conv=nn.Conv2d`` on
    ``(N, C, H, W)``, ``nn.Conv3d`` on ``(N, C, T, H, W)``."""

    def __init__(self, ch: int, conv=nn.Conv2d):
        super().__init__()
        self.a, self.b = conv(ch, ch, 3, padding=1), conv(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.b(F.gelu(self.a(x)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm over channels -> 1x1 (4x) -> GELU -> 1x1, residual;
    ``(N, C, H, W)``."""

    def __init__(self, ch: int):
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 7, padding=3, groups=ch)
        self.norm = nn.GroupNorm(1, ch)
        self.up, self.down = nn.Conv2d(ch, 4 * ch, 1), nn.Conv2d(4 * ch, ch, 1)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(self.dw(x)))))


class SuperResolution(nn.Module):
    """``(N, C_in, h, w)`` -> ``(N, 1, 4h, 4w)``: ConvNeXt blocks then a x4 pixel shuffle (the
    paper's module adds ~30% compression ratio over plain upsampling)."""

    def __init__(self, ch_in: int, ch: int = 16, blocks: int = 6):
        super().__init__()
        self.inp = nn.Conv2d(ch_in, ch, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(ch) for _ in range(blocks)])
        self.out = nn.Conv2d(ch, 16, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.out(self.blocks(self.inp(x))), 4)


class FactorizedPrior(nn.Module):
    """A learned, per-channel density for the hyper-latent (Balle et al. 2018, appendix 6.1):
    the CDF is a monotone function made of softplus-positive matrices and ``tanh`` gates;
    ``likelihood(z) = CDF(z + 1/2) - CDF(z - 1/2)``, computed on the side where it is not a
    difference of two numbers near 1."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3)):
        super().__init__()
        dims = (1, *filters, 1)
        scale = 10.0 ** (1 / (len(dims) - 1))
        self.matrices, self.biases, self.factors = (nn.ParameterList() for _ in range(3))
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits(self, v: torch.Tensor) -> torch.Tensor:
        """``v (C, 1, N)`` -> CDF logits ``(C, 1, N)``."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            v = torch.matmul(F.softplus(m), v) + b
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, C, ...)`` -> the probability of each (rounded or noisy) value."""
        C = z.shape[1]
        v = z.transpose(0, 1).reshape(C, 1, -1)
        lower, upper = self._logits(v - 0.5), self._logits(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lik.reshape(C, z.shape[0], *z.shape[2:]).transpose(0, 1)


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Probability of the unit bin around ``y`` under N(mean, scale²), from the lower tail
    (where a difference of two CDFs near 1 would lose it)."""
    scale = scale.clamp(min=MIN_SCALE)
    v = (y - mean).abs()
    normal = torch.distributions.Normal(0.0, 1.0)
    return normal.cdf((0.5 - v) / scale) - normal.cdf((-0.5 - v) / scale)


@dataclass
class CodecOutput:
    """x_hat ``(B, T, H, W)``; the likelihoods of the latent ``y`` and hyper-latent ``z``."""

    x_hat: torch.Tensor
    y_likelihood: torch.Tensor
    z_likelihood: torch.Tensor


class BlockCodec(nn.Module):
    """The network; see the module docstring for the data flow and shapes."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 48, 64), sr_blocks: int = 6):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.stem = nn.Conv2d(1, w0, 3, padding=1)
        self.enc2d = nn.Sequential(
            ResBlock(w0), nn.Conv2d(w0, w1, 3, stride=2, padding=1), nn.GELU(),
            ResBlock(w1), nn.Conv2d(w1, w2, 3, stride=2, padding=1),
        )  # fmt: skip
        self.enc3d = nn.Sequential(
            ResBlock(w2, nn.Conv3d), nn.Conv3d(w2, w3, 3, stride=2, padding=1), nn.GELU(),
            ResBlock(w3, nn.Conv3d), nn.Conv3d(w3, w3, 3, stride=2, padding=1),
        )  # fmt: skip
        self.hyper_enc = nn.Sequential(
            nn.Conv2d(w3, w3, 3, padding=1), nn.GELU(),
            nn.Conv2d(w3, w3, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv2d(w3, w3, 5, stride=2, padding=2),
        )  # fmt: skip
        self.hyper_dec = nn.Sequential(
            nn.ConvTranspose2d(w3, w3, 5, stride=2, padding=2, output_padding=1), nn.GELU(),
            nn.ConvTranspose2d(w3, w3, 5, stride=2, padding=2, output_padding=1), nn.GELU(),
            nn.Conv2d(w3, 2 * w3, 3, padding=1),
        )  # fmt: skip
        self.prior = FactorizedPrior(w3)
        self.dec3d = nn.Sequential(
            nn.ConvTranspose3d(w3, w3, 4, stride=2, padding=1), nn.GELU(), ResBlock(w3, nn.Conv3d),
            nn.ConvTranspose3d(w3, w2, 4, stride=2, padding=1), nn.GELU(),
        )  # fmt: skip
        self.dec2d = nn.Sequential(nn.Conv2d(w2, w1, 3, padding=1), nn.GELU(), ResBlock(w1))
        self.sr = SuperResolution(w1, blocks=sr_blocks)

    @staticmethod
    def check_shape(x: torch.Tensor) -> None:
        B, T, H, W = x.shape
        if T % 4 or H % 16 or W % 16:
            raise ValueError(f"a block must be T % 4 == 0 and H, W % 16 == 0, got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, T, H, W)`` -> latent ``y (B, 64, T/4, H/16, W/16)``."""
        self.check_shape(x)
        B, T, H, W = x.shape
        u = self.enc2d(F.gelu(self.stem(x.reshape(B * T, 1, H, W))))  # (B*T, w2, H/4, W/4)
        u = u.reshape(B, T, *u.shape[1:]).transpose(1, 2)  # (B, w2, T, H/4, W/4)
        return self.enc3d(F.gelu(u))

    def _per_frame(self, net: nn.Module, v: torch.Tensor) -> torch.Tensor:
        """A 2-D network over each latent frame of ``v (B, C, t, h, w)``."""
        B, C, t, h, w = v.shape
        out = net(v.transpose(1, 2).reshape(B * t, C, h, w))
        return out.reshape(B, t, *out.shape[1:]).transpose(1, 2)

    def hyper_encode(self, y: torch.Tensor) -> torch.Tensor:
        """``y (B, 64, t, h, w)`` -> hyper-latent ``z (B, 64, t, h/4, w/4)`` (rounded up)."""
        return self._per_frame(self.hyper_enc, y)

    def prior_params(self, z_hat: torch.Tensor, grid: tuple[int, int]):
        """``(mean, scale)`` of the latent's Gaussians from the hyper-latent ``z_hat``, each
        ``(B, 64, t, h, w)`` on the latent's ``grid = (h, w)`` (the hyper-decoder's output
        is cropped: latent grids need not be multiples of 4)."""
        params = self._per_frame(self.hyper_dec, z_hat)[..., : grid[0], : grid[1]]
        mean, scale = params.chunk(2, dim=1)
        return mean, F.softplus(scale)

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``y_hat (B, 64, T/4, H/16, W/16)`` -> ``x_hat (B, T, H, W)``."""
        u = self.dec3d(y_hat)  # (B, w2, T, H/4, W/4)
        B, C, T, h, w = u.shape
        u = self.dec2d(u.transpose(1, 2).reshape(B * T, C, h, w))
        return self.sr(u).reshape(B, T, 4 * h, 4 * w)

    def forward(self, x: torch.Tensor) -> CodecOutput:
        """Training pass: noise for rounding; the likelihoods give the rate."""
        y = self.encode(x)
        z = self.hyper_encode(y)
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
        mean, scale = self.prior_params(z_noisy, y.shape[-2:])
        if self.training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_hat = torch.round(y - mean) + mean
        return CodecOutput(
            self.decode(y_hat), gaussian_likelihood(y_hat, mean, scale), self.prior.likelihood(z_noisy)
        )


def rate_distortion(
    out: CodecOutput, x: torch.Tensor, valid: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, bits per value, MSE on valid points)``: loss = bits per value + ``lam`` x MSE;
    missing points (stored by the mask) cost no distortion."""
    n = x.numel()
    bits = -(torch.log2(out.y_likelihood.clamp(min=1e-9)).sum()
             + torch.log2(out.z_likelihood.clamp(min=1e-9)).sum()) / n  # fmt: skip
    w = valid.to(x.dtype)
    mse = ((out.x_hat - x) ** 2 * w).sum() / w.sum().clamp(min=1.0)
    return bits + lam * mse, bits, mse
