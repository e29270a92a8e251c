"""The feature sets an embedding is compared with, on the same anomaly field.

- :class:`EOFFeatures`: the leading principal components (EOFs) of the standardized,
  ``sqrt(cos lat)``-weighted anomalies of every input variable together (the convention of the
  ``eofs`` package), as many as the embedding has components: what a climate scientist would
  use instead. Fitted on each fold's training rows only and projected onto the rest.
- :class:`RandomFeatures`: a fixed Gaussian random projection of the same field to the same
  size: the floor any learned feature should clear.

Both take the field ``(T, P)`` of :class:`faextract.evaluate.inputs.InputData` (NaN-free).
"""

from __future__ import annotations

import numpy as np

#: Above this many rows and columns the EOFs come from a randomized SVD (Halko et al.).
EXACT_SVD_LIMIT = 2000


def leading_eofs(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The ``k`` leading right singular vectors of centred ``x (n, P)``: ``(P, k)``."""
    k = min(k, *x.shape)
    if min(x.shape) <= EXACT_SVD_LIMIT:
        _u, _s, vt = np.linalg.svd(x, full_matrices=False)
    else:
        from sklearn.utils.extmath import randomized_svd

        _u, _s, vt = randomized_svd(x, k, n_oversamples=20, n_iter=5, random_state=seed)
    return vt[:k].T


class EOFFeatures:
    """Principal components of ``field (T, P)`` fitted on the training rows of a fold."""

    def __init__(self, field: np.ndarray, components: int):
        self.field = np.asarray(field, dtype=np.float64)
        self.components = int(components)
        self._cache: dict[bytes, np.ndarray] = {}

    def transform(self, train_rows: np.ndarray) -> np.ndarray:
        key = np.asarray(train_rows, dtype=np.int64).tobytes()
        if key not in self._cache:
            train = self.field[train_rows]
            mean = train.mean(axis=0)
            eofs = leading_eofs(train - mean, self.components)
            self._cache = {key: (self.field - mean) @ eofs}  # one fold at a time is reused
        return self._cache[key]


class RandomFeatures:
    """A fixed Gaussian random projection of ``field (T, P)`` to ``components``."""

    def __init__(self, field: np.ndarray, components: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((field.shape[1], int(components))) / np.sqrt(field.shape[1])
        self.values = np.asarray(field, dtype=np.float64) @ proj

    def transform(self, train_rows: np.ndarray) -> np.ndarray:
        return self.values
