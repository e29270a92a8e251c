"""Fitting ``model.eof_components``: one pass over the training range before training.

The pass reads the training steps once (non-overlapping windows of the run's tile spec, in
time order), normalizes them as training does, pools each step onto the model's
``eof_grid`` (:meth:`~faextract.models.autoencoder.ClimateAutoencoder.pooled_input`) and fits
:class:`~faextract.models.eof.EOFProjection` on those rows. Every DDP rank makes the same
pass, so every rank holds the same EOFs without a broadcast.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from faextract.data.dataset import WindowDataset, make_loader
from faextract.data.tiling import TileSpec
from faextract.errors import DataError
from faextract.models.eof import sampling_error, separated_gaps


def cell_weights(lat: torch.Tensor, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """``lat (H,)`` degrees (NaN on padded rows) -> ``(channels * gh * gw,)`` weights of the
    pooled cells: the mean of ``sqrt(cos(lat))`` over the rows each coarse row averages
    (padded rows count 0), in :meth:`pooled_input`'s ``(C, gh, gw)`` order."""
    gh, gw = grid
    w = torch.sqrt(torch.cos(torch.deg2rad(lat.double())).clamp(min=0.0))
    w = torch.nan_to_num(w, nan=0.0)
    rows = F.adaptive_avg_pool1d(w[None, None, :], gh)[0, 0]  # (gh,)
    return rows[None, :, None].expand(channels, gh, gw).reshape(-1)


#: At most this many values of pooled fields are held for the fit (200 MB); a longer training
#: range is fitted on every n-th step.
MAX_FIT_VALUES = 50_000_000


def fit_eof_components(model, source, cube, stats, spec: TileSpec, say) -> None:
    """Fit ``model.eof`` on the training range ``source``/``cube`` (normalized with
    ``stats``, windows cut as ``spec`` cuts them, each step once, or every n-th step of a
    range longer than :data:`MAX_FIT_VALUES` allows)."""
    eof = model.eof
    every = max(1, -(-cube.shape[0] * eof.size // MAX_FIT_VALUES))
    once = dataclasses.replace(spec, stride=spec.window, warmup=0, edge="pad")
    dataset = WindowDataset(source, stats, once, cube=cube, batch_size=8)
    say(f"model.eof_components: fitting {eof.k} EOFs on the training range (one pass over "
        f"its {cube.shape[0]} steps)")  # fmt: skip
    device = eof.mean.device
    rows, weights, grid = [], None, None
    with torch.no_grad():
        for batch in make_loader(dataset):
            # windows of `once` do not overlap: each real step comes once, padding is -1
            keep = batch.step_valid & (batch.time % every == 0)  # (B, T)
            flat = model.pooled_input(batch.x.to(device), batch.mask.to(device), model.eof_grid)
            rows.append(flat[keep.to(device)].cpu())
            if weights is None:
                grid = tuple(batch.x.shape[-2:])
                weights = cell_weights(batch.lat[0], batch.x.shape[2], model.eof_grid)
    data = torch.cat(rows)
    try:
        spectrum = eof.fit(data.to(device), weights.to(device), grid).cpu()
    except ValueError as err:  # too few or constant steps: the user's data, not a bug
        raise DataError(f"{cube.source_label}: model.eof_components={eof.k}: {err}") from None
    steps = f"{data.shape[0]} training steps" + (f" (one in {every})" if every > 1 else "")
    say(f"model.eof_components: the {eof.k} leading EOFs of the {steps}' pooled input hold "
        f"{float(eof.explained.sum()):.0%} of its area-weighted variance")  # fmt: skip
    if model.eof_lag_components:
        m, k = model.eof_lag_components, eof.k
        say(f"model.eof_lag_components: z's components {k}-{k + m - 1} are the first {m} of "
            f"them {model.eof_lag} steps back")  # fmt: skip
    notice = unseparated_notice(spectrum, data.shape[0], eof.k)
    if notice:
        say(notice)


def unseparated_notice(spectrum: torch.Tensor, steps: int, k: int) -> str | None:
    """What to tell a user whose ``k``-th EOF is not separated from the next by North's rule
    (:func:`~faextract.models.eof.separated_gaps`, fitted on ``steps`` steps): the first
    ``k`` components are then a subspace the training steps happened to pick, and may carry
    new years' states less well than a ``k`` at a separated gap. None when it is separated."""
    upto = max(2 * k, 8)
    gaps = separated_gaps(spectrum, steps, upto)
    if k in gaps or k >= spectrum.numel():
        return None
    lam = spectrum.double()
    where = ", ".join(str(g) for g in gaps) if gaps else f"none of the first {upto}"
    return (
        f"model.eof_components: notice: EOF {k} ({float(lam[k - 1]):.1%} of the variance) and "
        f"EOF {k + 1} ({float(lam[k]):.1%}) are within sampling error of each other (North's "
        f"rule, {steps} steps: +-{sampling_error(lam[k - 1], steps):.1%}), so which {k} "
        f"leading EOFs are fitted depends on the training steps; the spectrum has separated "
        f"gaps after EOF {where}"
    )
