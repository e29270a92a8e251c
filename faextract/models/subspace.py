"""Subspace head: a compact embedding ``z_t`` per timestep from a hidden map sequence.

``(B, T, F, H, W) -> (B, T, d)``: 1x1 conv F -> F, SiLU, masked spatial mean *and* max
(means see basin-scale states, maxima see localized extremes), linear 2F -> d, then LayerNorm
when ``norm`` (the original head). LayerNorm makes every z_t a unit-variance vector around its
own mean: it removes the per-step amplitude (how anomalous a state is) and, with its learned
offsets, lets components sit near constant values; ``norm=False`` keeps the linear output.
Invalid cells (land in an ocean field, padding) are excluded through ``valid (B, T, H, W)``.

With ``grid=(gh, gw)`` the pooling keeps *where* things are: masked average pooling onto a
``gh x gw`` grid, flattened, then linear ``F * gh * gw -> d``. Global mean and max pooling of
translation-equivariant convolutions cannot tell an anomaly in the east Pacific from the same
anomaly in the Atlantic, so a region's index was not linearly recoverable from z (held-out
R² near 0 for a planted ENSO box that 16 EOFs recover at 0.95).

``dropout`` > 0 drops pooled features (training only) before the linear map, so that z cannot
rest on a few cells' values.

``rank`` > 0 (with a grid) factorizes the map to z: each component is a sum of ``rank``
products of a spatial pattern on the grid and a channel mix, ``z_k = sum_r sum_c B[k, r, c]
sum_p A[k, r, p] pooled[c, p]``: ``d * rank * (gh * gw + F)`` weights instead of
``d * F * gh * gw`` (on 18 x 36 cells with 32 channels: 11 k instead of 332 k for d = 16),
patterns like an EOF's loading map. A short record cannot fit the full map without
memorizing its months.
"""

from __future__ import annotations

import torch
from torch import nn


class SubspaceHead(nn.Module):
    def __init__(
        self,
        channels: int,
        dim: int = 32,
        norm: bool = True,
        grid: tuple[int, int] | None = None,
        dropout: float = 0.0,
        rank: int = 0,
    ):
        super().__init__()
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        self.grid = tuple(int(g) for g in grid) if grid else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Conv2d(channels, channels, 1)
        self.rank = int(rank) if self.grid else 0
        if self.rank:
            cells = self.grid[0] * self.grid[1]
            self.fc = _FactorizedMap(channels, cells, dim, self.rank)
        else:
            width = channels * self.grid[0] * self.grid[1] if self.grid else 2 * channels
            self.fc = nn.Linear(width, dim)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C, H, W = h.shape
        u = torch.nn.functional.silu(self.proj(h.reshape(B * T, C, H, W))).reshape(B, T, C, H, W)
        if self.grid is not None:
            return self.norm(self.fc(self.dropout(self._grid_pool(u, valid))))
        if valid is None:
            mean = u.mean(dim=(3, 4))
            mx = u.amax(dim=(3, 4))
        else:
            m = valid.to(u.dtype).unsqueeze(2)  # (B, T, 1, H, W)
            count = m.sum(dim=(3, 4)).clamp(min=1.0)
            mean = (u * m).sum(dim=(3, 4)) / count
            mx = u.masked_fill(m == 0, float("-inf")).amax(dim=(3, 4))
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        return self.norm(self.fc(self.dropout(torch.cat([mean, mx], dim=-1))))

    def _grid_pool(self, u: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> ``(B, T, C * gh * gw)``: masked means on the head's grid."""
        B, T, C, H, W = u.shape
        flat = u.reshape(B * T, C, H, W)
        pool = torch.nn.functional.adaptive_avg_pool2d
        if valid is None:
            return pool(flat, self.grid).reshape(B, T, -1)
        m = valid.to(u.dtype).reshape(B * T, 1, H, W)
        s = pool(flat * m, self.grid)
        n = pool(m, self.grid)
        return (s / n.clamp(min=1e-6)).reshape(B, T, -1)


class _FactorizedMap(nn.Module):
    """``(B, T, C * P) -> (B, T, d)`` (features channel-major, as the grid pooling flattens
    them): ``sum_r (B[k, r] . (pooled @ A[k, r]))`` plus a bias; see :class:`SubspaceHead`."""

    def __init__(self, channels: int, cells: int, dim: int, rank: int):
        super().__init__()
        self.channels, self.cells = channels, cells
        # Scaled so that z starts with the variance of nn.Linear's default initialization.
        self.spatial = nn.Parameter(torch.randn(dim, rank, cells) / cells**0.5)
        self.mix = nn.Parameter(torch.randn(dim, rank, channels) / (channels * rank) ** 0.5 / 3**0.5)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.reshape(*x.shape[:-1], self.channels, self.cells)  # (B, T, C, P)
        per_pattern = torch.einsum("btcp,krp->btkrc", pooled, self.spatial)
        return torch.einsum("btkrc,krc->btk", per_pattern, self.mix) + self.bias
