"""Subspace head: a compact embedding ``z_t`` per timestep from a hidden map sequence.

``(B, T, F, H, W) -> (B, T, d)``: 1x1 conv F -> F, SiLU, masked spatial mean *and* max
(means see basin-scale states, maxima see localized extremes), linear 2F -> d, then LayerNorm
when ``norm`` (the original head). LayerNorm makes every z_t a unit-variance vector around its
own mean: it removes the per-step amplitude (how anomalous a state is) and, with its learned
offsets, lets components sit near constant values; ``norm=False`` keeps the linear output.
Invalid cells (land in an ocean field, padding) are excluded through ``valid (B, T, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn


class SubspaceHead(nn.Module):
    def __init__(self, channels: int, dim: int = 32, norm: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)
        self.fc = nn.Linear(2 * channels, dim)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C, H, W = h.shape
        u = torch.nn.functional.silu(self.proj(h.reshape(B * T, C, H, W))).reshape(B, T, C, H, W)
        if valid is None:
            mean = u.mean(dim=(3, 4))
            mx = u.amax(dim=(3, 4))
        else:
            m = valid.to(u.dtype).unsqueeze(2)  # (B, T, 1, H, W)
            count = m.sum(dim=(3, 4)).clamp(min=1.0)
            mean = (u * m).sum(dim=(3, 4)) / count
            mx = u.masked_fill(m == 0, float("-inf")).amax(dim=(3, 4))
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        return self.norm(self.fc(torch.cat([mean, mx], dim=-1)))
