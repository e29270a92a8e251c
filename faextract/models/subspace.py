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
    ):
        super().__init__()
        self.grid = tuple(int(g) for g in grid) if grid else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Conv2d(channels, channels, 1)
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
