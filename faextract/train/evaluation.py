"""Validation during training, and the clustering head's k-means start."""

from __future__ import annotations

import torch

from faextract.runtime import distributed
from faextract.train.losses import embedding_loss, weighted_sse


@torch.no_grad()
def validate(model, loader, device, info, amp) -> dict:
    """Validation MSEs of the model and of the climatology and persistence baselines, and
    the embedding decoder's loss (``embedding``, as in training: the pooled fields at t .. t+K,
    and at the ``embedding_past`` lags, decoded from z_t alone; on a short record it is what
    shows z memorizing the training range while the spatial decoders still improve).

    The MSEs are computed on steps t >= 1 where both x_t and x_{t-1} are valid, so every
    number compares the same cells. Climatology predicts 0 in normalized units (the
    climatological mean, when the statistics include a climatology; otherwise the channel
    mean). ``embedding`` is the mean over validation batches.
    """
    model.eval()
    sums = {k: None for k in ("recon", "forecast", "climatology", "persistence", "weight")}
    emb = torch.zeros(2, device=device)  # sum of batch losses, batches

    def add(key, value):
        sums[key] = value if sums[key] is None else sums[key] + value

    for batch in loader:
        batch = batch.to(device)
        x, mask, lat = batch.x, batch.mask, batch.lat
        with amp:
            out = model(x, mask, batch.phase, batch.step_valid)
        m = mask[:, 1:] & mask[:, :-1]
        tgt = x[:, 1:]
        if out.recon is not None:
            add("recon", weighted_sse(out.recon[:, 1:].float(), tgt, m, lat)[0])
        if out.forecast is not None:
            add("forecast", weighted_sse(out.forecast[:, :-1].float(), tgt, m, lat)[0])
        add("climatology", weighted_sse(torch.zeros_like(tgt), tgt, m, lat)[0])
        sse, w = weighted_sse(x[:, :-1], tgt, m, lat)
        add("persistence", sse)
        add("weight", w)
        loss = embedding_loss(out.coarse.float(), x, mask, model.embedding_past)
        emb += torch.stack([loss, emb.new_ones(())])
    model.train()
    if sums["weight"] is None:
        return {}
    keys = [k for k, v in sums.items() if v is not None]
    packed = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), info)
    emb = distributed.all_reduce_sum(emb, info)
    res = dict(zip(keys, packed, strict=True))
    w = res.pop("weight").clamp(min=1e-12)
    metrics = {k: float((v / w).mean()) for k, v in res.items()}
    metrics["embedding"] = float(emb[0] / emb[1].clamp(min=1.0))
    return metrics


@torch.no_grad()
def init_clusters(model, loader, device, amp, seed, info, max_batches: int = 50) -> None:
    """k-means on embeddings of up to ``max_batches`` batches, computed on rank 0 and shared."""
    zs = []
    model.eval()
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        batch = batch.to(device)
        with amp:
            _, z, _ = model.encode(batch.x, batch.mask, batch.phase, batch.step_valid)
        zs.append(z[batch.step_valid].float())
    model.train()
    if zs:
        model.cluster.init_kmeans(torch.cat(zs), seed=seed)
    if info.enabled:
        torch.distributed.broadcast(model.cluster.centers.data, src=0)
    model.cluster.initialized = True
