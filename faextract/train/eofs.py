"""Fitting ``model.eof_components``: one pass over the training range before training.

The pass reads the training steps once (non-overlapping windows of the run's tile spec, in
time order), normalizes them as training does, pools each step onto the embedding decoder's
grid (:meth:`~faextract.models.autoencoder.ClimateAutoencoder.pooled_input`) and fits
:class:`~faextract.models.eof.EOFProjection` on those rows. Every DDP rank makes the same
pass, so every rank holds the same EOFs without a broadcast.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from faextract.data.dataset import WindowDataset, make_loader
from faextract.data.tiling import TileSpec


def cell_weights(lat: torch.Tensor, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """``lat (H,)`` degrees (NaN on padded rows) -> ``(channels * gh * gw,)`` weights of the
    pooled cells: the mean of ``sqrt(cos(lat))`` over the rows each coarse row averages
    (padded rows count 0), in :meth:`pooled_input`'s ``(C, gh, gw)`` order."""
    gh, gw = grid
    w = torch.sqrt(torch.cos(torch.deg2rad(lat.double())).clamp(min=0.0))
    w = torch.nan_to_num(w, nan=0.0)
    rows = F.adaptive_avg_pool1d(w[None, None, :], gh)[0, 0]  # (gh,)
    return rows[None, :, None].expand(channels, gh, gw).reshape(-1)


def fit_eof_components(model, source, cube, stats, spec: TileSpec, say) -> None:
    """Fit ``model.eof`` on the training range ``source``/``cube`` (normalized with
    ``stats``, windows cut as ``spec`` cuts them, each step once)."""
    eof = model.eof
    once = dataclasses.replace(spec, stride=spec.window, warmup=0, edge="pad")
    dataset = WindowDataset(source, stats, once, cube=cube, batch_size=8)
    device = eof.mean.device
    seen = torch.zeros(cube.shape[0], dtype=torch.bool)
    rows, weights, grid = [], None, None
    with torch.no_grad():
        for batch in make_loader(dataset):
            keep = batch.step_valid.clone()  # real steps not taken yet, (B, T)
            keep[keep.clone()] = ~seen[batch.time[keep]]
            seen[batch.time[keep]] = True
            flat = model.pooled_input(batch.x.to(device), batch.mask.to(device))  # (B, T, P)
            rows.append(flat[keep.to(device)].cpu())
            if weights is None:
                grid = tuple(batch.x.shape[-2:])
                weights = cell_weights(batch.lat[0], batch.x.shape[2], model.embedding_grid)
    data = torch.cat(rows)
    eof.fit(data.to(device), weights.to(device), grid)
    say(f"model.eof_components: the {eof.k} leading EOFs of the {data.shape[0]} training "
        f"steps' pooled input hold {float(eof.explained.sum()):.0%} of its area-weighted "
        "variance")  # fmt: skip
