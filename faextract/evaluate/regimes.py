"""Regimes: k-means on an embedding, judged as the authors' earlier pipelines judged clusters.

For each k: the silhouette (scikit-learn, on at most ``SILHOUETTE_SAMPLE`` rows), the mean
dwell time (steps a run of one regime lasts), and each regime's seasonal composition (the
share of its steps in DJF, MAM, JJA, SON). Embeddings are standardized per component first, so
no component dominates by scale alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faextract.evaluate.metrics import finite_rows

SEASONS = ("DJF", "MAM", "JJA", "SON")
SILHOUETTE_SAMPLE = 5000


def dwell_time(labels: np.ndarray) -> float:
    """Mean length of the runs of equal consecutive labels."""
    if labels.size == 0:
        return 0.0
    changes = np.count_nonzero(labels[1:] != labels[:-1])
    return float(labels.size / (changes + 1))


def season_of(month: np.ndarray) -> np.ndarray:
    """0..3 for DJF, MAM, JJA, SON."""
    return (np.asarray(month) % 12) // 3


def regimes(
    z: np.ndarray, month: np.ndarray, ks: Sequence[int] = range(4, 9), seed: int = 0
) -> dict[int, dict]:
    """``{k: {"silhouette", "dwell_time", "seasons": [[DJF, MAM, JJA, SON] per regime],
    "sizes"}}``; a k with more clusters than distinct rows is left out."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    keep = finite_rows(z)
    x = np.asarray(z[keep], dtype=np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    season = season_of(np.asarray(month)[keep])
    out = {}
    n_distinct = len(np.unique(np.round(x, 12), axis=0))
    for k in ks:
        if k >= n_distinct or k < 2:
            continue
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
        sample = min(SILHOUETTE_SAMPLE, x.shape[0])
        sil = silhouette_score(x, labels, sample_size=sample, random_state=seed)
        comp = []
        for r in range(k):
            s = season[labels == r]
            comp.append([round(float((s == i).mean()), 4) if s.size else 0.0 for i in range(4)])
        out[int(k)] = {
            "silhouette": float(sil),
            "dwell_time": dwell_time(labels),
            "seasons": comp,
            "sizes": [int((labels == r).sum()) for r in range(k)],
        }
    return out
