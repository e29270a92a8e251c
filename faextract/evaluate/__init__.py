"""Measure whether embeddings carry the physics: probes against EOF baselines, use of the
embedding, stability across seeds, robustness to perturbed inputs, regimes and attention.

``faextract evaluate`` calls :func:`evaluate`; every measurement is also a function here.
"""

from faextract.evaluate.attention import box_percentile
from faextract.evaluate.baselines import EOFFeatures, RandomFeatures
from faextract.evaluate.climatology import Calendar, anomalies, seasonal_cycle
from faextract.evaluate.inputs import IndexSpec, InputData, eof_targets, read_inputs
from faextract.evaluate.metrics import (
    effective_rank,
    linear_cka,
    month_jump,
    relative_change,
    seasonal_share,
)
from faextract.evaluate.probe import blocked_folds, probe, unseen_difference
from faextract.evaluate.regimes import regimes
from faextract.evaluate.report import Report
from faextract.evaluate.run import EvaluateOptions, evaluate

__all__ = [
    "Calendar",
    "EOFFeatures",
    "EvaluateOptions",
    "IndexSpec",
    "InputData",
    "RandomFeatures",
    "Report",
    "anomalies",
    "blocked_folds",
    "box_percentile",
    "effective_rank",
    "eof_targets",
    "evaluate",
    "linear_cka",
    "month_jump",
    "probe",
    "read_inputs",
    "regimes",
    "relative_change",
    "seasonal_cycle",
    "seasonal_share",
    "unseen_difference",
]
