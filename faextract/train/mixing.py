"""New anomaly states made from real training windows: mixing pairs (``train.mixup``) and
negating them (``train.flip``).

A short record (a decade of monthly means: about a hundred training windows) lets the encoder
memorize its months: z decodes the training months' fields and none of a new month's (the
validation embedding loss rises after a third of the run), and on months the encoder never
saw the embedding carries less than the EOFs. Mixing gives it states it has not seen: with
``train.mixup = p`` each window ``a`` of a training batch is, with probability ``p``, replaced by

    x = cos(theta) x_a + sin(theta) x_b,    theta ~ Uniform(0, pi / 2)

with another window ``b`` of the same batch and spatial tile. For anomalies (the climatology is
removed first) that are independent between the two windows, ``x`` has the variance of either
(cos² + sin² = 1, where plain mixup's convex combination shrinks it), and under linear dynamics
``x`` is a trajectory the system could have taken. Reconstruction, forecast and embedding
targets are all read from the mixed window, so the objective stays consistent; the mixed
window keeps ``a``'s calendar phase and is valid where both windows are.

``train.flip = p`` negates each window with probability ``p`` (``x -> -x``; the mask, calendar
phase and padding stay). Anomalies of red noise and of a symmetric oscillation are as likely
with either sign, and under linear dynamics ``-x`` is a trajectory too. Since z is decoded
linearly, a model that must serve both signs is pushed towards z being an odd function of
the anomalies, closer to the linear projections (EOFs) that carry over to new time.

Randomness comes from torch's global generator, which checkpoints save and resumes restore.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from faextract.data.batch import WindowBatch


def mix_windows(batch: WindowBatch, probability: float, tiles: torch.Tensor | None = None) -> WindowBatch:
    """``batch`` with each window mixed, with ``probability``, with another window of the batch
    (see the module). ``tiles (B,)``: the windows' spatial tile ids; windows are only mixed
    with windows of the same tile (None: one tile, the whole grid). A window alone in its tile
    stays as it is."""
    B = len(batch)
    if probability <= 0 or B < 2:
        return batch
    partner = _partners(tiles if tiles is not None else torch.zeros(B, dtype=torch.long))
    chosen = (torch.rand(B) < probability) & (partner != torch.arange(B))
    if not chosen.any():
        return batch
    theta = torch.rand(B) * (math.pi / 2)
    cos = torch.where(chosen, theta.cos(), torch.ones(B))
    sin = torch.where(chosen, theta.sin(), torch.zeros(B))
    device = batch.x.device
    partner, chosen = partner.to(device), chosen.to(device)
    shape = (B,) + (1,) * (batch.x.dim() - 1)
    c, s = cos.to(device, batch.x.dtype).view(shape), sin.to(device, batch.x.dtype).view(shape)

    time = torch.where(
        chosen[:, None] & (batch.time[partner] < 0), torch.full_like(batch.time, -1), batch.time
    )
    step_ok = (time >= 0)[:, :, None, None, None]
    mask = torch.where(chosen.view(shape), batch.mask & batch.mask[partner], batch.mask) & step_ok
    x = (c * batch.x + s * batch.x[partner]) * mask.to(batch.x.dtype)
    phase = torch.where(time >= 0, batch.phase, torch.zeros_like(batch.phase))
    return WindowBatch(x=x, mask=mask, phase=phase, time=time, lat=batch.lat, index=batch.index)


def _partners(tiles: torch.Tensor) -> torch.Tensor:
    """``(B,)`` a partner for every window: a random cycle through each tile's windows (never
    the window itself where its tile has two or more)."""
    tiles = tiles.cpu()
    partner = torch.arange(tiles.numel())
    for tile in tiles.unique():
        members = (tiles == tile).nonzero().flatten()
        if members.numel() < 2:
            continue
        order = members[torch.randperm(members.numel())]
        partner[order] = order.roll(-1)
    return partner


def flip_windows(batch: WindowBatch, probability: float) -> WindowBatch:
    """``batch`` with each window's anomalies negated with ``probability`` (see the module)."""
    B = len(batch)
    if probability <= 0 or B == 0:
        return batch
    flip = torch.rand(B) < probability
    if not flip.any():
        return batch
    sign = torch.where(flip, -1.0, 1.0).to(batch.x.device, batch.x.dtype)
    x = batch.x * sign.view((B,) + (1,) * (batch.x.dim() - 1))
    return dataclasses.replace(batch, x=x)
