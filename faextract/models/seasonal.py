"""Fixed seasonal positional encoding for FAConvLSTM's temporal self-attention.

The code of a timestep is computed from its *phase in the calendar year* (0 on 1 January,
:func:`faextract.data.time.season_phase`), not from its index in the window: the same day of
year gets the same code in any year, in any calendar (360_day, noleap, ...), so the attention
can tell a January step from a July step wherever a window starts. Harmonics ``k = 1..d/2``::

    pe[2k-2] = sin(2 pi k phase),  pe[2k-1] = cos(2 pi k phase)

Without timestamps, the phase falls back to ``step / period`` (365 for daily, 12 for monthly).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def seasonal_encoding(phase: torch.Tensor, dim: int) -> torch.Tensor:
    """``phase (..., T)`` in [0, 1) -> ``(..., T, dim)`` fixed sin/cos harmonics."""
    k = torch.arange(1, dim // 2 + 1, device=phase.device, dtype=torch.float32)
    ang = 2 * math.pi * phase.float().unsqueeze(-1) * k
    pe = torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)
    if pe.shape[-1] < dim:  # odd dim: pad one zero column
        pe = torch.nn.functional.pad(pe, (0, dim - pe.shape[-1]))
    return pe


def phase_from_times(times, calendar: str = "standard") -> torch.Tensor:
    """Phases ``(T,)`` or ``(B, T)`` from datetime64/cftime arrays, or pass a phase tensor through."""
    if torch.is_tensor(times):
        return times.float()
    from faextract.data.time import season_phase

    arr = np.asarray(times)
    return torch.from_numpy(season_phase(arr, calendar).astype(np.float32))


class SeasonalEncoding(nn.Module):
    """Module wrapper: ``phase (B, T) -> (B, T, dim)``; no parameters (the code is fixed)."""

    def __init__(self, dim: int, period: float = 365.0):
        super().__init__()
        self.dim, self.period = dim, float(period)

    def forward(
        self, phase: torch.Tensor | None, B: int, T: int, device, offset: int = 0
    ) -> torch.Tensor:
        if phase is None:
            steps = torch.arange(offset, offset + T, device=device, dtype=torch.float32)
            phase = (steps / self.period).remainder(1.0).expand(B, T)
        elif phase.dim() == 1:
            phase = phase.to(device).expand(B, T)
        return seasonal_encoding(phase.to(device), self.dim)
