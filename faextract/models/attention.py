"""Attention blocks of FAConvLSTM (Nji & Wang, arXiv 2601.10914).

:class:`AxialAttention` — lightweight spatial attention on a reduced channel width, multi-head,
along rows (longitude) and then along columns (latitude). The column pass attends over the
row pass's output, so the effective 2-D attention from query ``(y, x)`` to key ``(y', x')`` is
``A_col[x](y, y') * A_row[y'](x, x')``: a proper distribution over the whole grid, reached in
O(HW(H + W)) instead of O((HW)^2). A learned per-head distance penalty (circular in longitude
for periodic global grids) gives the heads a sense of locality they can unlearn
(``locality=False`` leaves it out). With
``position=K``, a sinusoidal code of each cell's place on the grid (K frequencies per axis,
periodic in longitude) enters the queries and keys through a learned map that starts at zero:
without it the logits see only content and relative distance, so a fixed relation between two
places (a teleconnection: the North Atlantic follows the east Pacific) cannot be expressed.

:class:`TemporalSelfAttention` — pre-norm multi-head self-attention over per-timestep
embeddings with a fixed seasonal positional code (:mod:`faextract.models.seasonal`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.layers import pointwise_conv


@dataclass
class AxialWeights:
    """Attention weights of one axial pass.

    row: ``(B, heads, H, W, W)`` — per row y, query x -> key x'.
    col: ``(B, heads, W, H, H)`` — per column x, query y -> key y'.
    """

    row: torch.Tensor
    col: torch.Tensor

    def effective(self) -> torch.Tensor:
        """Full 2-D attention ``(B, heads, H, W, H, W)``: query (y, x) -> key (y', x')."""
        # E[y, x, y', x'] = col[x, y, y'] * row[y', x, x']
        return torch.einsum("bnxyk,bnkxl->bnyxkl", self.col, self.row)


def _distance_bias(n: int, periodic: bool, device) -> torch.Tensor:
    """``(n, n)`` normalized distance in [0, 1] between positions along one axis."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    d = (i[:, None] - i[None, :]).abs()
    if periodic:
        d = torch.minimum(d, n - d)
        return d / max(1.0, n / 2)
    return d / max(1.0, n - 1)


class AxialAttention(nn.Module):
    """Axial self-attention on ``(B, C, H, W)``; returns a context of the same shape.

    Data flow: 1x1 conv C -> (q_row, k_row, q_col, k_col, v) of width ``dim`` -> row attention
    (over W) -> column attention (over H) on the row output -> 1x1 conv dim -> C, scaled by a
    learned ``gamma`` (starts small so the cell begins close to a plain ConvLSTM).
    """

    def __init__(
        self,
        channels: int,
        dim: int = 16,
        heads: int = 2,
        periodic: bool = False,
        position: int = 0,
        locality: bool = True,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} must be divisible by heads {heads}")
        if position < 0:
            raise ValueError(f"attention position frequencies must be >= 0, got {position}")
        self.dim, self.heads, self.periodic = dim, heads, periodic
        self.position = int(position)
        self.qkv = nn.Conv2d(channels, 5 * dim, 1)
        # (q_row, k_row, q_col, k_col) from the position code; zero: content-only at the start
        self.pos_qk = nn.Conv2d(4 * self.position, 4 * dim, 1, bias=False) if position else None
        if self.pos_qk is not None:
            nn.init.zeros_(self.pos_qk.weight)
        self.out = nn.Conv2d(dim, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(0.1))
        # Per-head locality: logits -= softplus(distance_scale) * normalized distance.
        self.distance_scale = nn.Parameter(torch.zeros(2, heads)) if locality else None

    def _attend(self, q, k, v, bias, need_weights: bool):
        # q, k, v: (N, heads, L, dh); bias: (heads, L, L)
        if not need_weights and q.is_cuda:
            # CUDA's memory-efficient kernel takes the bias; on CPU a float mask sends SDPA to
            # its math path (extra passes for fully masked rows), slower than the plain form.
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0)), None
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2) + bias
        w = logits.softmax(dim=-1)
        return w @ v, (w if need_weights else None)

    def _position_code(self, H: int, W: int, device, dtype) -> torch.Tensor:
        """``(1, 4K, H, W)``: sin/cos of K frequencies of the row's place (half-periods over the
        height: latitude is not periodic) and of the column's (whole periods over the width
        when periodic in longitude)."""
        k = torch.arange(1, self.position + 1, device=device, dtype=torch.float32)
        y = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H
        x = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W
        ay = math.pi * k[:, None] * y[None]  # (K, H)
        ax = (2 if self.periodic else 1) * math.pi * k[:, None] * x[None]  # (K, W)
        rows = torch.cat([ay.sin(), ay.cos()])[:, :, None].expand(-1, H, W)
        cols = torch.cat([ax.sin(), ax.cos()])[:, None, :].expand(-1, H, W)
        return torch.cat([rows, cols])[None].to(dtype)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        B, C, H, W = x.shape
        n, d = self.heads, self.dim // self.heads
        proj = pointwise_conv(x, self.qkv.weight, self.qkv.bias)  # (B, 5*dim, H, W)
        if self.pos_qk is not None:
            code = self.pos_qk(self._position_code(H, W, x.device, x.dtype))  # (1, 4*dim, H, W)
            proj = torch.cat([proj[:, : 4 * self.dim] + code, proj[:, 4 * self.dim :]], dim=1)
        qr, kr, qc, kc, v = proj.chunk(5, dim=1)  # each (B, dim, H, W)

        def rows(t):  # (B, dim, H, W) -> (B*H, heads, W, dh)
            return t.reshape(B, n, d, H, W).permute(0, 3, 1, 4, 2).reshape(B * H, n, W, d)

        def cols(t):  # (B, dim, H, W) -> (B*W, heads, H, dh)
            return t.reshape(B, n, d, H, W).permute(0, 4, 1, 3, 2).reshape(B * W, n, H, d)

        if self.distance_scale is not None:
            scale = F.softplus(self.distance_scale)
        else:
            scale = torch.zeros(2, n, device=x.device)
        bias_r = -scale[0][:, None, None] * _distance_bias(W, self.periodic, x.device)
        bias_c = -scale[1][:, None, None] * _distance_bias(H, False, x.device)
        o_r, w_r = self._attend(rows(qr), rows(kr), rows(v), bias_r.to(x.dtype), need_weights)
        # back to (B, dim, H, W), then attend along columns over the row output
        o_r = o_r.reshape(B, H, n, W, d).permute(0, 2, 4, 1, 3).reshape(B, self.dim, H, W)
        o_c, w_c = self._attend(cols(qc), cols(kc), cols(o_r), bias_c.to(x.dtype), need_weights)
        o_c = o_c.reshape(B, W, n, H, d).permute(0, 2, 4, 3, 1).reshape(B, self.dim, H, W)
        ctx = self.gamma * pointwise_conv(o_c, self.out.weight, self.out.bias)
        weights = None
        if need_weights:
            weights = AxialWeights(
                row=w_r.reshape(B, H, n, W, W).permute(0, 2, 1, 3, 4),
                col=w_c.reshape(B, W, n, H, H).permute(0, 2, 1, 3, 4),
            )
        return ctx, weights


class TemporalSelfAttention(nn.Module):
    """Pre-norm transformer block over ``z (B, T, d)`` with an additive positional code.

    ``key_padding_mask (B, T)`` is True for padded steps, which are not attended to. With
    ``causal``, step t attends to steps <= t only: z_t then depends on the past and present of
    the input, never on later steps of its window (which would leak the future into a
    "per-timestep" embedding and make it depend on where t falls in the window).
    """

    def __init__(
        self, dim: int, heads: int = 4, ff_mult: int = 2, dropout: float = 0.0,
        causal: bool = False,
    ):  # fmt: skip
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding size {dim} must be divisible by temporal heads {heads}")
        self.heads, self.causal = heads, causal
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(
        self, z: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ):
        h = self.norm1(z + pos)
        if self.causal:
            a, w = self.attn(h, h, h, attn_mask=self._causal_mask(z, key_padding_mask), need_weights=True)
        else:
            if key_padding_mask is not None:
                # A fully padded row would make softmax NaN; let such rows attend to themselves.
                key_padding_mask = key_padding_mask & ~key_padding_mask.all(dim=1, keepdim=True)
            a, w = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=True)
        z = z + a
        z = z + self.ff(self.norm2(z))
        return z, w

    def _causal_mask(self, z: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B * heads, T, T)`` True where step t may not attend to s: s > t, or s padded;
        every step may attend to itself (a padded step's output is not used, and a row with
        nothing to attend to would make softmax NaN)."""
        B, T = z.shape[:2]
        blocked = torch.ones(T, T, dtype=torch.bool, device=z.device).triu(1).expand(B, T, T)
        if key_padding_mask is not None:
            blocked = blocked | key_padding_mask.bool()[:, None, :]
        blocked = blocked & ~torch.eye(T, dtype=torch.bool, device=z.device)
        return blocked.repeat_interleave(self.heads, dim=0)
