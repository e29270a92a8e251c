"""Training losses: masked, area-weighted MSE per variable, the embedding's decorrelation and
the DEC clustering terms, and :func:`compute_losses`, the objective of one batch.

Every squared error is weighted by ``cos(latitude)`` (a grid cell's area on a regular grid)
and by the validity mask (land in an ocean field, padding), then averaged per channel and
the channels averaged, so a variable with many invalid cells counts as much as any other.
"""

from __future__ import annotations

import torch

from faextract.models.autoencoder import coarse_target


def area_weights(lat: torch.Tensor) -> torch.Tensor:
    """``lat (B, H)`` degrees -> ``(B, 1, 1, H, 1)`` cos-latitude weights, 0 where lat is NaN."""
    w = torch.cos(torch.deg2rad(torch.nan_to_num(lat, nan=90.0))).clamp(min=0.0)
    return w[:, None, None, :, None]


def weighted_sse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lat: torch.Tensor):
    """Per-channel weighted sum of squared errors and sum of weights: two ``(C,)`` tensors.

    Shapes: ``pred``/``target``/``mask`` ``(B, T, C, H, W)``, ``lat`` ``(B, H)``.
    """
    w = mask.to(pred.dtype) * area_weights(lat).to(pred.dtype)
    err = (pred.float() - target.float()).pow(2) * w
    return err.sum(dim=(0, 1, 3, 4)), w.float().sum(dim=(0, 1, 3, 4))


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lat: torch.Tensor
) -> torch.Tensor:
    """Mean over channels of the area-weighted, masked MSE of each channel."""
    sse, wsum = weighted_sse(pred, target, mask, lat)
    present = wsum > 0
    if not present.any():
        return pred.sum() * 0.0
    return (sse[present] / wsum[present]).mean()


def dec_kl(q: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P || Q) between the sharpened target P and soft assignments ``q (B, T, K)``."""
    from faextract.models.autoencoder import ClusterHead

    if valid is not None:
        q = q[valid]
    q = q.reshape(-1, q.shape[-1]).clamp(min=1e-8)
    p = ClusterHead.target(q)
    return (p * (p.clamp(min=1e-8).log() - q.log())).sum(dim=-1).mean()


def decorrelation(z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the embedding's components in use (VICReg's variance and covariance terms, Bardes
    et al. 2022): a hinge pulling each component's standard deviation over the batch up to 1,
    plus the squared off-diagonal covariances over the dimension. ``z (B, T, d)``;
    ``valid (B, T)`` leaves out padded steps. Without it the embedding decoder's gradient
    concentrated z on a few directions (effective rank 2.6-4.6 of 16 on the benchmark cubes;
    8.1 with weight 0.02)."""
    x = z[valid] if valid is not None else z.reshape(-1, z.shape[-1])
    x = x.float()
    if x.shape[0] < 2:
        return z.sum() * 0.0
    x = x - x.mean(dim=0)
    cov = x.T @ x / (x.shape[0] - 1)
    std = torch.sqrt(cov.diagonal() + 1e-4)
    off = cov - torch.diag(cov.diagonal())
    return torch.relu(1.0 - std).mean() + off.pow(2).sum() / x.shape[1]


def embedding_loss(
    coarse: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, past: tuple[int, ...] = ()
) -> torch.Tensor:
    """The embedding decoder's loss: ``coarse (B, T, K + 1 + P, C, gh, gw)``, the fields at
    t .. t+K and at t - L for each lag L of ``past`` (P of them) decoded from z_t, against
    ``x (B, T, C, H, W)`` pooled on the same grid (``mask`` alike).

    The present state and the future count half each: with the horizons averaged alike, z kept
    what is predictable and dropped the rest of the present (leading EOFs of the fields'
    noise), which users compare. The past steps, when asked for, add their mean with the
    future's weight: z_t then keeps what the recurrent memory saw of the window's earlier
    steps (an oscillation's phase), which a snapshot's EOFs cannot carry."""
    target, valid = coarse_target(x, mask, tuple(coarse.shape[-2:]))
    no_area = torch.zeros(x.shape[0], target.shape[-2], device=x.device)  # pooled already
    T = x.shape[1]
    future = coarse.shape[2] - len(past)
    horizons = [
        masked_mse(coarse[:, : T - k, k], target[:, k:], valid[:, k:], no_area)
        for k in range(min(future, T))
    ]
    now, ahead = horizons[0], horizons[1:]
    loss = 0.5 * (now + torch.stack(ahead).mean()) if ahead else now
    behind = [
        masked_mse(coarse[:, lag:, future + j], target[:, : T - lag], valid[:, : T - lag], no_area)
        for j, lag in enumerate(past)
        if lag < T
    ]
    return loss + 0.5 * torch.stack(behind).mean() if behind else loss


def compute_losses(model, batch, config, cluster_on: bool):
    """Forward one :class:`~faextract.data.batch.WindowBatch`; returns (total loss, dict of
    parts) on the batch's device. ``config`` is the run's :class:`~faextract.config.Config`."""
    x, mask, lat = batch.x, batch.mask, batch.lat
    step_valid = batch.step_valid
    out = model(x, mask, batch.phase, step_valid)
    parts = {}
    total = x.new_zeros(())
    if out.recon is not None:
        parts["recon"] = masked_mse(out.recon, x, mask, lat)
        total = total + parts["recon"]
    if out.forecast is not None and x.shape[1] > 1:
        parts["forecast"] = masked_mse(out.forecast[:, :-1], x[:, 1:], mask[:, 1:], lat)
        total = total + parts["forecast"]
    parts["embedding"] = embedding_loss(
        out.coarse, x, mask, tuple(config.model.embedding_past)
    )
    total = total + config.model.embedding_loss_weight * parts["embedding"]
    if config.model.decorrelation_weight > 0:
        parts["decorrelation"] = decorrelation(out.embeddings, step_valid)
        total = total + config.model.decorrelation_weight * parts["decorrelation"]
    if cluster_on and out.q is not None:
        parts["cluster"] = dec_kl(out.q, step_valid)
        total = total + config.model.cluster_weight * parts["cluster"]
    return total, parts
