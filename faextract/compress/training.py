"""What a compressor learns from, and how it is scored while it learns.

:class:`CodecBlocks` serves crops of a cube's blocks (``time`` steps of one channel, a
``crop`` x ``crop`` cell window of the grid, or the whole grid when it is smaller), each
prepared exactly as the container prepares a block it compresses
(:func:`~faextract.compress.blocks.prepare`: normalized by its own offset and range, missing
points filled, padded to the network's multiples), as :class:`CodecBatch` es ``(B, T, H, W)``.
Items are (block start, channel) pairs; block starts overlap by half a block. An epoch visits
the block starts in a shuffled order, all channels of a start together (one read of the
files per start); the order and the crops are functions of ``(seed, epoch)``; ranks and
workers share the block starts as training's windows do (:class:`~faextract.data.dataset.EpochBatches`,
:class:`~faextract.data.dataset.CubeItems`).

:func:`codec_losses` is the rate-distortion objective of a batch; :func:`validate_codec` its
mean over the validation range (bits per value, MSE in units of the block's range, loss).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from faextract.compress.blocks import BlockSpec, padded_shape, prepare
from faextract.compress.model import rate_distortion
from faextract.data.cube import Cube
from faextract.data.dataset import CubeItems, CubeSource, EpochBatches
from faextract.runtime import distributed


@dataclass
class CodecBatch:
    """x: ``(B, T, H, W)`` float32 prepared blocks; valid: ``(B, T, H, W)`` bool (False where
    the input was missing or the block padded)."""

    x: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = True) -> CodecBatch:
        return CodecBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking)
                            for f in fields(self)))  # fmt: skip

    def pin_memory(self) -> CodecBatch:
        return CodecBatch(*(getattr(self, f.name).pin_memory() for f in fields(self)))


class CodecBlocks(CubeItems, EpochBatches):
    """Crops of a cube's (block, channel) items as :class:`CodecBatch` es of ``batch_size``;
    see the module docstring."""

    def __init__(
        self,
        source: CubeSource,
        *,
        crop: int,
        spec: BlockSpec = BlockSpec(),
        cube: Cube | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = False,
        batch_size: int = 1,
    ):
        CubeItems.__init__(self, source, cube=cube)
        EpochBatches.__init__(self, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                              drop_uneven=drop_uneven, batch_size=batch_size)  # fmt: skip
        cube = self.cube()
        n, C, H, W = cube.shape
        self.spec, self.periodic = spec, bool(cube.periodic)
        self.crop = (min(crop, H), min(crop, W))
        T = min(spec.time, n)
        self.starts = list(range(0, n - T + 1, max(1, T // 2)))
        self.channels_n = C
        self.length = T

    def rank_items(self) -> list[tuple[int, int]]:
        """This rank's ``(block start, channel)`` items in the epoch's order."""
        return [(t0, c) for t0 in self._rank_share(self.starts) for c in range(self.channels_n)]

    def __iter__(self):
        cube, cache = self.cube(), {}
        for indices in self._mine(self._batches()):
            xs, valids = [], []
            for t0, c in indices:
                if t0 not in cache:  # one read per block start (all channels)
                    cache = {t0: cube.read(t0, t0 + self.length)}
                x, valid = self._item(cache[t0][:, c], t0, c)
                xs.append(x)
                valids.append(valid)
            yield CodecBatch(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(valids)))

    def _item(self, values: np.ndarray, t0: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The crop of item ``(t0, c)`` of ``values (T, H, W)``, prepared, and its padded
        valid mask."""
        T, H, W = values.shape
        (ch, cw) = self.crop
        rng = np.random.default_rng([self.seed, self.epoch, t0, c])
        y0 = int(rng.integers(0, H - ch + 1)) if self.shuffle else (H - ch) // 2
        x0 = int(rng.integers(0, W - cw + 1)) if self.shuffle else (W - cw) // 2
        crop = values[:, y0 : y0 + ch, x0 : x0 + cw]
        prep = prepare(crop, periodic=self.periodic and cw == W, spec=self.spec)
        shape = padded_shape(crop.shape, self.spec)
        x = prep.x if prep.kind == "data" else np.zeros(shape, np.float32)
        valid = np.zeros(shape, dtype=bool)
        valid[:T, :ch, :cw] = prep.valid if prep.kind == "data" else False
        return x, valid


def codec_losses(net, batch: CodecBatch, lam: float):
    """``(loss, {"bits": bits per value, "mse": MSE on valid points})`` of one batch."""
    loss, bits, mse = rate_distortion(net(batch.x), batch.x, batch.valid, lam)
    return loss, {"bits": bits, "mse": mse}


@torch.no_grad()
def validate_codec(model, loader, device, info, lam: float) -> dict:
    """Bits per value, MSE and loss over ``loader``, the network in eval mode (latents rounded,
    as the coder will); batches weighted by their size, summed over ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in loader:
        batch = batch.to(device)
        _, parts = codec_losses(model, batch, lam)
        n = len(batch)
        sums += torch.stack([parts["bits"].double() * n, parts["mse"].double() * n,
                             torch.tensor(float(n), dtype=torch.float64, device=device)])  # fmt: skip
    model.train()
    sums = distributed.all_reduce_sum(sums, info)
    if float(sums[2]) == 0:
        return {}
    bits, mse = float(sums[0] / sums[2]), float(sums[1] / sums[2])
    return {"loss": bits + lam * mse, "bits": bits, "mse": mse}
