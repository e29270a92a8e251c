"""Linear probes with time-blocked cross-validation: how much of a target a feature set carries.

A ridge regression from the features at step t to each target at step t + lead, scored by the
held-out R^2 of predictions pooled over all test blocks (1 - SSE / SS around the mean of the
tested targets; 0 is the skill of a constant, below 0 worse than one).

Time series leak through overlapping windows and autocorrelation, so:

- test rows are contiguous blocks (``folds`` of them, covering the record);
- training rows keep ``gap = window + lead`` steps away from a test block on both sides: an
  embedding at t summarizes the inputs of [t - window, t], so no training pair shares an input
  step or a target step with a test pair;
- the ridge strength is chosen per target inside the training rows alone, from a log-spaced
  grid, by the error on 5 contiguous blocks of them (no gap inside). Two other choices were
  measured and dropped: inner blocks with the full gap left half the rows to fit on, where 16
  features overfit, and chose ridges far too strong (lead-3 R² 0.10 where least squares
  scored 0.47 on 20 years of monthly data); leave-one-out leaked through autocorrelated
  neighbours and chose ridges near zero for near-constant features (R² -167 for a barely
  trained embedding, which carries nothing and should score ~0). The score itself always
  comes from the gapped test blocks, so the choice can cost skill, never leak;
- features that are fitted (EOFs) are fitted on the training rows of each fold only
  (:class:`Features`), then applied to the test rows.

A probe on features that carry nothing of the target scores about 0 (slightly below: the
training mean of another period is not the test block's mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

#: Contiguous blocks of the training rows on which the ridge strength is chosen.
INNER_FOLDS = 5
#: Ridge strengths tried, per training row (features standardized on the training rows):
#: the penalty is ``lambda * n``, so that a strength chosen on the smaller inner training sets
#: means the same on the whole training set (X^T X grows with n; a fixed penalty would be
#: relatively stronger inside, and the inner search would pick too strong a ridge).
ALPHAS = np.logspace(-5, 3, 17)


class Features(Protocol):
    """Features that may depend on the training rows (EOFs are fitted per fold)."""

    def transform(self, train_rows: np.ndarray) -> np.ndarray:
        """``(T, p)`` features for every step, fitted on ``train_rows`` only."""
        ...


class FixedFeatures:
    """Features that need no fitting (an embedding): ``(T, p)``."""

    def __init__(self, values: np.ndarray):
        values = np.asarray(values, dtype=np.float64)
        self.values = values.reshape(values.shape[0], -1)

    def transform(self, train_rows: np.ndarray) -> np.ndarray:
        return self.values


def blocked_folds(
    times: np.ndarray, folds: int, gap: int, shift: float = 0.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split rows (with integer ``times``, increasing) into ``folds`` contiguous test blocks;
    each fold's training rows are those at least ``gap`` steps from every row of its block.

    ``shift`` (in [0, 1)) moves every block boundary by that fraction of a block; the last
    block then wraps around: it is the record's end and its start, two pieces that each keep
    ``gap`` from the training rows. Returns ``(train positions, test positions)`` into
    ``times``. Folds whose training or test set would be empty are left out.
    """
    times = np.asarray(times)
    n = times.size
    if not 0.0 <= shift < 1.0:
        raise ValueError(f"shift must be in [0, 1), got {shift}")
    edges = (np.linspace(0, n, folds + 1) + shift * n / max(folds, 1)).round().astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        test = np.arange(a, b) % n if n else np.arange(0)
        if test.size == 0:
            continue
        test = np.unique(test)
        train = np.nonzero(_far_from(times, times[test], gap))[0]
        if train.size:
            out.append((train, test))
    return out


def _far_from(times: np.ndarray, tested: np.ndarray, gap: int) -> np.ndarray:
    """Whether each of ``times`` is at least ``gap`` steps from every one of ``tested``
    (sorted)."""
    if tested.size == 0:
        return np.ones(times.shape, dtype=bool)
    at = np.clip(np.searchsorted(tested, times), 1, tested.size) - 1
    after = tested[np.minimum(at + 1, tested.size - 1)]
    return np.minimum(np.abs(times - tested[at]), np.abs(times - after)) >= gap


#: What :func:`probe` reports of the held-out predictions.
SCORES = ("r2", "correlation")

#: Fewest unseen steps an ``unseen`` probe is scored on (fewer: NaN).
MIN_UNSEEN = 12


def unseen_split(times: np.ndarray, unseen: np.ndarray, lead: int, gap: int):
    """The one split of an ``unseen`` probe: test rows whose step and target step (``lead``
    later) are both unseen by the encoder, training rows whose both are seen and that keep
    ``gap`` steps from every test row. ``times``: the rows' steps; ``unseen``: a mask over all
    steps. Empty (nothing to score) with fewer than :data:`MIN_UNSEEN` test rows."""
    times = np.asarray(times)
    a, b = unseen[times], unseen[times + lead]
    test = np.nonzero(a & b)[0]
    train = np.nonzero(~a & ~b)[0]
    train = train[_far_from(times[train], times[test], gap)]
    return [(train, test)] if test.size >= MIN_UNSEEN and train.size else []


def _standardize(x_train: np.ndarray, *others: np.ndarray):
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, np.inf)
    return [(a - mean) / std for a in (x_train, *others)]


def _ridge_path(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge coefficients of standardized ``x (n, p)`` on centred ``y (n, q)`` for every
    strength in :data:`ALPHAS`: ``(A, p, q)``."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    shrink = s[None, :] / (s[None, :] ** 2 + x.shape[0] * ALPHAS[:, None])  # (A, r)
    return np.einsum("rp,ar,rq->apq", vt, shrink, u.T @ y)


def _fit_predict(x_tr, y_tr, x_te, inner: int = INNER_FOLDS) -> np.ndarray:
    """Predictions for ``x_te``: ridge fitted on the training rows, each target's strength
    chosen by the error on ``inner`` contiguous blocks of them (see the module docstring)."""
    n, q = x_tr.shape[0], y_tr.shape[1]
    err = np.zeros((ALPHAS.size, q))
    edges = np.linspace(0, n, inner + 1).round().astype(int)
    for a0, a1 in zip(edges[:-1], edges[1:], strict=True):
        if a1 <= a0 or n - (a1 - a0) < 2:
            continue
        rows = np.r_[np.arange(0, a0), np.arange(a1, n)]
        a, b = _standardize(x_tr[rows], x_tr[a0:a1])
        ym = y_tr[rows].mean(axis=0)
        pred = np.einsum("np,apq->anq", b, _ridge_path(a, y_tr[rows] - ym)) + ym
        err += ((pred - y_tr[a0:a1][None]) ** 2).sum(axis=1)
    best = err.argmin(axis=0)  # (q,)
    a, b = _standardize(x_tr, x_te)
    ym = y_tr.mean(axis=0)
    coef = _ridge_path(a, y_tr - ym)[best, :, np.arange(q)]  # (q, p)
    return b @ coef.T + ym


def probe(
    features: Features | np.ndarray,
    targets: dict[str, np.ndarray],
    leads: Sequence[int] = (0,),
    *,
    window: int,
    folds: int = 5,
    repeats: int = 1,
    unseen: np.ndarray | None = None,
    score: str = "r2",
) -> dict[str, dict[int, float]]:
    """Held-out R^2 of each target at each lead: ``{target: {lead: r2}}``.

    ``features``: ``(T, p)`` or a :class:`Features`; ``targets``: each ``(T,)`` on the same
    steps; ``window``: steps an embedding looks back (the training window), which with the lead
    sets the gap between training and test rows. Rows with NaN features or targets are left
    out; a lead that leaves too few rows gives NaN.

    ``repeats``: the cross-validation is run this many times with the block boundaries shifted
    by ``1 / repeats`` of a block each time (:func:`blocked_folds`) and the R^2 averaged. On a
    short record the score moves a lot with where the blocks fall (on 132 months, by up to 0.5
    between 5 and 10 blocks); the average over placements says more of the features and less
    of one split.

    ``unseen`` (a boolean mask over the steps): instead of the blocks, score on the steps the
    encoder never trained on, fitting on the steps it did (:func:`unseen_split`): the skill of
    the features on new time, which the blocks cannot show when the encoder trained on most
    of them. ``folds`` and ``repeats`` then do not apply.

    ``score``: ``r2`` (the default) or ``correlation``, the Pearson correlation of the pooled
    held-out predictions with the targets. R^2 is taken around the mean of the tested targets,
    so on one short stretch (``unseen``) whose mean the training rows did not have, a level
    offset costs R^2 however closely the predictions follow the targets; the correlation says
    how closely they follow.
    """
    return probe_scores(
        features, targets, leads, window=window, folds=folds, repeats=repeats, unseen=unseen,
        scores=(score,),
    )[score]  # fmt: skip


def probe_scores(
    features: Features | np.ndarray,
    targets: dict[str, np.ndarray],
    leads: Sequence[int] = (0,),
    *,
    window: int,
    folds: int = 5,
    repeats: int = 1,
    unseen: np.ndarray | None = None,
    scores: Sequence[str] = SCORES,
) -> dict[str, dict[str, dict[int, float]]]:
    """:func:`probe` with several ``scores`` of the same held-out predictions, which are
    fitted once: ``{score: {target: {lead: value}}}``."""
    for score in scores:
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if unseen is not None:
        preds = unseen_predictions(features, targets, leads, window=window, unseen=unseen)
        return prediction_scores(preds, targets, scores)
    feats = _as_features(features)
    names, y_all = _stacked(targets)
    T = y_all.shape[0]
    out = {score: {k: {} for k in names} for score in scores}
    for lead in leads:
        y = y_all[lead:]
        rows = _probe_rows(feats, y)
        splits = [blocked_folds(rows, folds, window + lead, r / repeats) for r in range(repeats)]
        # (placements, scores, targets), averaged over the placements of the blocks
        values = np.stack([
            _scores(y, _held_out_predictions(feats, y, rows, s, T - lead), scores) for s in splits
        ])  # fmt: skip
        for i, score in enumerate(scores):
            for j, name in enumerate(names):
                out[score][name][lead] = float(values[:, i, j].mean())
    return out


def unseen_predictions(
    features: Features | np.ndarray,
    targets: dict[str, np.ndarray],
    leads: Sequence[int] = (0,),
    *,
    window: int,
    unseen: np.ndarray,
) -> dict[int, np.ndarray]:
    """The ``unseen`` probe's held-out predictions (:func:`probe`), fitted once for every
    score and comparison made of them: ``{lead: (T - lead, q)}``, the targets in the order of
    ``targets``, NaN on the steps not scored (seen by the encoder, or fewer than
    :data:`MIN_UNSEEN` of them)."""
    return _unseen_fits(features, targets, leads, window, unseen, [None])[0]


#: Contiguous parts of its training rows an ``unseen`` probe is refitted without, one at a time.
REFITS = 5


def unseen_refits(
    features: Features | np.ndarray,
    targets: dict[str, np.ndarray],
    leads: Sequence[int] = (0,),
    *,
    window: int,
    unseen: np.ndarray,
    parts: int = REFITS,
) -> list[dict[int, np.ndarray]]:
    """The ``unseen`` probe refitted ``parts`` times, each time without one of ``parts``
    contiguous stretches of its training rows (fitted features, EOFs, refitted on the rows
    kept as well): ``parts`` dicts like :func:`unseen_predictions`'. How far these move a
    score is how much it owes to the particular training steps, which a bootstrap of the
    scored steps (:func:`paired_difference`) does not see."""
    left_out = [(j, parts) for j in range(parts)]
    return _unseen_fits(features, targets, leads, window, unseen, left_out)


def _unseen_fits(features, targets, leads, window: int, unseen, left_out) -> list[dict]:
    """One :func:`unseen_predictions`-like dict for each of ``left_out``: ``None`` (the probe
    on all its training rows) or ``(j, parts)`` (without the j-th of ``parts`` contiguous
    stretches of them)."""
    feats = _as_features(features)
    _, y_all = _stacked(targets)
    T, mask = y_all.shape[0], np.asarray(unseen, dtype=bool)
    out: list[dict[int, np.ndarray]] = [{} for _ in left_out]
    for lead in leads:
        y = y_all[lead:]
        rows = _probe_rows(feats, y)
        split = unseen_split(rows, mask, lead, window + lead)
        for fits, part in zip(out, left_out, strict=True):
            fits[lead] = _held_out_predictions(feats, y, rows, _without(split, part), T - lead)
    return out


def _without(split: list, part: tuple[int, int] | None) -> list:
    """``split`` (none or one ``(train, test)``) without the ``j``-th of ``parts`` contiguous
    stretches of its training rows, ``part = (j, parts)``; unchanged for ``None``."""
    if part is None or not split:
        return split
    (train, test), (j, parts) = split[0], part
    edges = np.linspace(0, train.size, parts + 1).round().astype(int)
    rest = np.r_[train[: edges[j]], train[edges[j + 1] :]]
    return [(rest, test)] if rest.size else []


def refit_difference(
    predictions: dict[int, np.ndarray],
    baseline: dict[int, np.ndarray],
    refits: list[dict[int, np.ndarray]],
    baseline_refits: list[dict[int, np.ndarray]],
    targets: dict[str, np.ndarray],
) -> dict[str, dict[int, tuple[float, float, float]]]:
    """``{target: {lead: (difference, low, high)}}``: R^2 of ``predictions`` minus R^2 of
    ``baseline`` (:func:`unseen_predictions`) and the least and greatest of the same
    difference over the probe fitted on all its training rows and each of the refits
    (:func:`unseen_refits`, the same number for both), all scored on the steps every one of
    them covers. A range that holds 0 means the difference could go either way with another
    stretch of training steps. NaN where fewer than :data:`MIN_UNSEEN` steps are scored."""
    if len(refits) != len(baseline_refits):
        raise ValueError(f"{len(refits)} refits against {len(baseline_refits)} of the baseline")
    names, y_all = _stacked(targets)
    out: dict[str, dict[int, tuple[float, float, float]]] = {k: {} for k in names}
    for lead, pa in predictions.items():
        pairs = [(pa, baseline[lead])]
        pairs += [(a[lead], b[lead]) for a, b in zip(refits, baseline_refits, strict=True)]
        every = np.all([np.isfinite(p).all(axis=1) for pair in pairs for p in pair], axis=0)
        y = y_all[lead:][every]
        for j, name in enumerate(names):
            if not _scorable(y[:, j]):
                out[name][lead] = (float("nan"),) * 3
                continue
            d = [float(_r2(y[:, j], a[every, j]) - _r2(y[:, j], b[every, j])) for a, b in pairs]
            out[name][lead] = (d[0], min(d), max(d))
    return out


def prediction_scores(
    predictions: dict[int, np.ndarray],
    targets: dict[str, np.ndarray],
    scores: Sequence[str] = SCORES,
) -> dict[str, dict[str, dict[int, float]]]:
    """Each of ``scores`` of held-out ``predictions`` (:func:`unseen_predictions`) over the
    steps they cover: ``{score: {target: {lead: value}}}``."""
    names, y_all = _stacked(targets)
    out = {score: {k: {} for k in names} for score in scores}
    for lead, pred in predictions.items():
        values = _scores(y_all[lead:], pred, scores)
        for i, score in enumerate(scores):
            for j, name in enumerate(names):
                out[score][name][lead] = float(values[i, j])
    return out


def _as_features(features: Features | np.ndarray) -> Features:
    return FixedFeatures(features) if isinstance(features, np.ndarray) else features


def _stacked(targets: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The target names and their values side by side, ``(T, q)``."""
    names = list(targets)
    return names, np.stack([np.asarray(targets[k], dtype=np.float64) for k in names], axis=1)


def _probe_rows(feats: Features, y: np.ndarray) -> np.ndarray:
    """The rows ``0..len(y)-1`` a probe uses: every target finite and, for fixed features,
    every feature (fitted ones are checked per fold)."""
    ok = np.isfinite(y).all(axis=1)
    if isinstance(feats, FixedFeatures):
        ok &= np.isfinite(feats.values[: len(y)]).all(axis=1)
    return np.nonzero(ok)[0]


def _held_out_predictions(
    feats: Features, y: np.ndarray, rows: np.ndarray, splits, steps: int
) -> np.ndarray:
    """``y.shape``: the held-out prediction of each step of ``y`` from the split that tests
    it (NaN for steps no split tests); ``splits`` index ``rows``, the usable steps."""
    pred = np.full(y.shape, np.nan)
    for train, test in splits:
        x = feats.transform(rows[train])[:steps]
        if x.shape[0] != steps:
            raise ValueError(f"features have {x.shape[0]} rows, expected at least {steps}")
        pred[rows[test]] = _fit_predict(x[rows[train]], y[rows[train]], x[rows[test]])
    return pred


def _scores(y: np.ndarray, pred: np.ndarray, scores: Sequence[str]) -> np.ndarray:
    """``(len(scores), q)``: each of ``scores`` (:data:`SCORES`) of each target column of ``y``
    over the steps ``pred`` covers (finite), pooled (NaN where nothing was tested or the
    tested targets are constant)."""
    tested = np.isfinite(pred).all(axis=1)
    out = np.full((len(scores), y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        yt, pt = y[tested, j], pred[tested, j]
        ss = ((yt - yt.mean()) ** 2).sum() if yt.size else 0.0
        if ss <= 0:
            continue
        sp = ((pt - pt.mean()) ** 2).sum()
        for i, score in enumerate(scores):
            if score == "r2":
                out[i, j] = _r2(yt, pt)
            elif sp > 0:
                out[i, j] = ((yt - yt.mean()) * (pt - pt.mean())).sum() / np.sqrt(ss * sp)
    return out


#: Bootstrap draws of :func:`unseen_difference`, and the central share of them it reports.
DRAWS, LEVEL = 2000, 0.9


def unseen_difference(
    features: Features | np.ndarray,
    baseline: Features | np.ndarray,
    targets: dict[str, np.ndarray],
    leads: Sequence[int] = (0,),
    *,
    window: int,
    unseen: np.ndarray,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[int, tuple[float, float, float]]]:
    """How far ``features`` are ahead of ``baseline`` on the steps the encoder never saw, and
    whether the unseen stretch is long enough to tell: ``{target: {lead: (difference, low,
    high)}}``, the R^2 of ``features`` minus the R^2 of ``baseline`` (both the ``unseen``
    probe of :func:`probe`, on the steps both are scored on) and the central ``level`` share
    of the same difference over ``draws`` circular block-bootstrap resamples of those steps
    (blocks of ceil(sqrt(n)) consecutive steps, so that the autocorrelation within a block is
    kept; both feature sets are scored on the same resampled steps, which cancels much of
    the noise the two share). An interval that holds 0 means the unseen steps cannot tell the
    two apart. NaN where fewer than :data:`MIN_UNSEEN` steps are scored or the targets are
    constant.
    """
    args = dict(window=window, unseen=unseen)
    pa = unseen_predictions(features, targets, leads, **args)
    pb = unseen_predictions(baseline, targets, leads, **args)
    return paired_difference(pa, pb, targets, draws=draws, level=level, seed=seed)


def paired_difference(
    predictions: dict[int, np.ndarray],
    baseline: dict[int, np.ndarray],
    targets: dict[str, np.ndarray],
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[int, tuple[float, float, float]]]:
    """:func:`unseen_difference` of held-out predictions already made
    (:func:`unseen_predictions`, the same leads in both): the steps both cover are scored."""
    names, y_all = _stacked(targets)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, tuple[float, float, float]]] = {k: {} for k in names}
    for lead, pa in predictions.items():
        pb = baseline[lead]
        both = np.isfinite(pa).all(axis=1) & np.isfinite(pb).all(axis=1)
        for j, name in enumerate(names):
            yt = y_all[lead:][both, j]
            out[name][lead] = _paired_interval(yt, pa[both, j], pb[both, j], draws, level, rng)
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R^2 along the last axis (around the mean of ``y`` there)."""
    ss = ((y - y.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss > 0, 1 - ((y - pred) ** 2).sum(axis=-1) / ss, np.nan)


def _scorable(y: np.ndarray) -> bool:
    """Whether an unseen difference is scored on targets ``y (n,)``: at least
    :data:`MIN_UNSEEN` steps, and not constant (R^2 needs a spread)."""
    return y.size >= MIN_UNSEEN and np.ptp(y) > 0


def _paired_interval(y, pa, pb, draws: int, level: float, rng) -> tuple[float, float, float]:
    n = y.size
    if not _scorable(y):
        return (float("nan"),) * 3
    diff = float(_r2(y, pa) - _r2(y, pb))
    block = int(np.ceil(np.sqrt(n)))
    starts = rng.integers(0, n, size=(draws, -(-n // block)))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(draws, -1)[:, :n]
    d = _r2(y[idx], pa[idx]) - _r2(y[idx], pb[idx])
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2]) if d.size else (np.nan, np.nan)
    return diff, float(lo), float(hi)
