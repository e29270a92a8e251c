"""The leading EOFs of the input as the first components of z (``model.eof_components``).

A climate scientist's first features are the principal components of the fields' anomalies
(EOF analysis): a fixed linear map, fitted once, that transfers to years it never saw. A
network fitted to a short record carries the same large-scale state less well on new years
(on the representation benchmark's unseen months: R² 0.81 against the EOFs' 0.97 at lead 0
on 20 years, 0.51-0.68 against 0.78-0.88 on 11). With ``k`` EOF components the first ``k``
entries of ``z_t`` are the leading principal components of the input averaged onto
``eof_grid`` (36 x 72 cells by default), fitted on the training range before training and
frozen; the recurrent head makes the other ``d - k``, and the decoders, which hear all of z,
train them to carry what the EOFs miss (memory, where the state is heading).

The fit follows classical EOF analysis on the pooled anomalies: cells weighted by
``sqrt(cos(latitude))`` (so that the covariance is area-weighted; on one draw of the
benchmark's 11-year cube, 8 unweighted EOFs carried its tropical index on unseen months at
R² 0.79 instead of 0.90), centred on the training mean, and each principal component scaled
to unit variance over the training steps. Signs are fixed so that each pattern's largest loading is positive.

Shapes: the projection maps pooled fields flattened per step, ``(..., P)`` with
``P = C * gh * gw``, to ``(..., k)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EOFProjection(nn.Module):
    """``k`` leading EOFs of ``P``-value pooled fields; :meth:`fit` sets them, ``forward``
    projects. Everything is a buffer: saved with the model's weights, never trained."""

    def __init__(self, k: int, size: int):
        super().__init__()
        if not 1 <= k <= size:
            raise ValueError(f"EOF components must be in [1, {size}], got {k}")
        self.k, self.size = int(k), int(size)
        self.register_buffer("mean", torch.zeros(size))
        # rows: the EOF patterns times the cells' sqrt(cos lat) weights, over each PC's std
        self.register_buffer("patterns", torch.zeros(k, size))
        self.register_buffer("explained", torch.zeros(k))  # share of the weighted variance
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("grid", torch.zeros(2, dtype=torch.long))  # (H, W) of the input
        # host copies of `fitted` and `grid` (reading a CUDA buffer every step would sync)
        self.is_fitted, self.input_grid = False, (0, 0)
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_host())

    def _sync_host(self) -> None:
        self.is_fitted = bool(self.fitted)
        self.input_grid = tuple(int(g) for g in self.grid)

    @torch.no_grad()
    def fit(self, rows: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Fit on ``rows (N, P)`` (one pooled field per training step, each step once) with
        cell weights ``weights (P,)`` (``sqrt(cos(lat))``, 0 for cells that never count);
        ``grid``: the ``(H, W)`` of the input the rows were pooled from. Returns the whole
        spectrum, every EOF's share of the weighted variance (``(min(N, P),)``, decreasing),
        for :func:`separated_gaps`."""
        if rows.ndim != 2 or rows.shape[1] != self.size:
            raise ValueError(f"EOF fit: rows must be (N, {self.size}), got {tuple(rows.shape)}")
        n = rows.shape[0]
        if n <= self.k:
            raise ValueError(
                f"EOF fit: {self.k} components need more than {self.k} training steps, got {n}"
            )
        x = rows.double()
        w = weights.double().reshape(1, -1)
        mean = x.mean(dim=0)
        _, s, vt = torch.linalg.svd((x - mean) * w, full_matrices=False)
        total = float(s.pow(2).sum())
        if total <= 0 or not math.isfinite(total):
            raise ValueError("EOF fit: the training range's fields do not vary")
        spectrum = (s.pow(2) / total).float()
        vt, s = vt[: self.k], s[: self.k]
        sign = torch.sign(vt.gather(1, vt.abs().argmax(dim=1, keepdim=True)))
        std = (s / math.sqrt(n - 1)).clamp(min=1e-12)
        self.mean.copy_(mean.float())
        self.patterns.copy_((vt * sign * w / std[:, None]).float())
        self.explained.copy_(spectrum[: self.k])
        self.grid.copy_(torch.tensor([int(g) for g in grid]))
        self.fitted.fill_(True)
        self._sync_host()
        return spectrum

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        """``(..., P)`` pooled fields -> ``(..., k)`` principal components (unit variance on
        the training steps), in float32 also under bf16 autocast."""
        with torch.autocast(flat.device.type, enabled=False):
            return (flat.float() - self.mean) @ self.patterns.T


def separated_gaps(spectrum: torch.Tensor, steps: int, upto: int) -> list[int]:
    """The ``k`` in ``1..upto`` at which EOF ``k`` stands apart from EOF ``k + 1`` by North et
    al.'s (1982) rule of thumb: the gap between their variances is larger than the sampling
    error of the first, ``lambda_k * sqrt(2 / steps)``. Where it is not, the fitted leading-``k``
    subspace depends on which steps were sampled (another stretch of the same climate gives
    another one). ``steps`` counted as independent makes the error the smallest it can be:
    autocorrelated steps (daily, monthly) leave fewer gaps than this finds, never more.
    ``spectrum``: the variances (or their shares), decreasing, as :meth:`EOFProjection.fit`
    returns them."""
    lam = spectrum.double()
    last = min(int(upto), lam.numel() - 1)
    return [i + 1 for i in range(last) if float(lam[i] - lam[i + 1]) > sampling_error(lam[i], steps)]


def sampling_error(variance, steps: int) -> float:
    """North et al.'s (1982) sampling error of an EOF's variance estimated from ``steps``
    independent steps: ``variance * sqrt(2 / steps)``."""
    return float(variance) * math.sqrt(2.0 / max(int(steps), 1))
