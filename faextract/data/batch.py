"""The typed batch both jobs hand to the model: windows stacked ``(B, T, C, H, W)``.

Made by :meth:`faextract.data.dataset.BlockReader.window_batch` (training's
:class:`~faextract.data.dataset.WindowDataset` and embed's block prefetcher both use it), moved
with :meth:`WindowBatch.to`, and pinned by a DataLoader through :meth:`WindowBatch.pin_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class WindowBatch:
    """Normalized windows and what the model needs to know about them.

    x:     ``(B, T, C, H, W)`` float32, normalized, 0 where the input was invalid.
    mask:  ``(B, T, C, H, W)`` bool, True where the input was valid.
    phase: ``(B, T)`` float32, fraction of the calendar year at each step (0 where padded).
    time:  ``(B, T)`` int64, step index into the cube (-1 where a window runs past its end).
    lat:   ``(B, H)`` float32 latitudes of the tile rows (NaN where padded).
    index: ``(B,)`` int64, the windows' indices in their :class:`~faextract.data.tiling.Tiler`.
    """

    x: torch.Tensor
    mask: torch.Tensor
    phase: torch.Tensor
    time: torch.Tensor
    lat: torch.Tensor
    index: torch.Tensor

    @property
    def step_valid(self) -> torch.Tensor:
        """``(B, T)`` True for real steps, False for padding past the cube's end."""
        return self.time >= 0

    def __len__(self) -> int:
        return self.x.shape[0]

    def _map(self, fn) -> WindowBatch:
        return WindowBatch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = True) -> WindowBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> WindowBatch:
        return self._map(lambda t: t.pin_memory())

    def window(self, j: int) -> WindowBatch:
        """The ``j``-th window as a batch of one."""
        return self._map(lambda t: t[j : j + 1])
