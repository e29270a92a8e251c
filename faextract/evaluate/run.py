"""``faextract evaluate``: do the features carry the physics? One side-by-side report.

Flow: the stores (:mod:`~faextract.evaluate.stores`) -> the cube they embed, on their time
axis, as anomaly indices and a standardized anomaly field (:mod:`~faextract.evaluate.inputs`)
-> for each store and each baseline (:mod:`~faextract.evaluate.baselines`): held-out linear
probes (:mod:`~faextract.evaluate.probe`), use of the embedding
(:mod:`~faextract.evaluate.metrics`), regimes (:mod:`~faextract.evaluate.regimes`), attention
(:mod:`~faextract.evaluate.attention`), robustness against stores of perturbed inputs; CKA
between stores -> ``report.json``, ``report.md``, figures (:mod:`~faextract.evaluate.report`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faextract.data.cube import open_cube
from faextract.data.time import to_cftime
from faextract.errors import DataError
from faextract.evaluate import attention, metrics
from faextract.evaluate.baselines import EOFFeatures, RandomFeatures
from faextract.evaluate.climatology import Calendar
from faextract.evaluate.inputs import MAX_CELLS, IndexSpec, InputData, eof_targets, read_inputs
from faextract.evaluate.probe import (
    Features,
    paired_difference,
    prediction_scores,
    probe,
    refit_difference,
    unseen_predictions,
    unseen_refits,
)
from faextract.evaluate.regimes import regimes
from faextract.evaluate.report import FeatureReport, Report, StoreReport, write
from faextract.evaluate.stores import StoreFeatures, load_store
from faextract.outputs import existing_output, remove_output


@dataclass
class EvaluateOptions:
    indices: list[IndexSpec] = field(default_factory=list)
    leads: tuple[int, ...] = (0, 1, 3)
    eof_targets: int = 5  # leading PCs of each channel's anomalies, as automatic targets
    folds: int = 5
    # the cross-validation again with the blocks shifted, R² averaged (probe's ``repeats``)
    repeats: int = 1
    tiles: str = "concat"  # how spatially tiled embeddings become features: concat or mean
    regimes: tuple[int, ...] = (4, 5, 6, 7, 8)
    max_cells: int = MAX_CELLS  # cells per variable of the anomaly field (EOFs, baselines)
    overwrite: bool = False


def is_evaluation_dir(path: Path) -> bool:
    report = path / "report.json"
    return report.is_file() and '"faextract_evaluation"' in report.read_text()[:200]


def _split_channel(name: str) -> tuple[str, float | None]:
    var, _, level = name.partition("@")
    return var, (float(level) if level else None)


def _open_input(inputs: Sequence[str], channels: tuple[str, ...]):
    """The cube with exactly the stores' channels, in their order."""
    import dataclasses

    variables = list(dict.fromkeys(_split_channel(c)[0] for c in channels))
    levels = sorted({lv for c in channels if (lv := _split_channel(c)[1]) is not None}) or None
    cube = open_cube(list(inputs), variables or None, levels=levels)
    missing = [c for c in channels if c not in cube.channels]
    if missing:
        raise DataError(
            f"{cube.source_label}: the input lacks {missing[0]!r}, which the store embeds "
            f"(the input has {', '.join(cube.channels)})"
        )
    if channels and tuple(cube.channels) != tuple(channels):
        cube = dataclasses.replace(cube, channels=tuple(channels))
    return cube


def _time_key(values: np.ndarray, calendar: str) -> list[tuple]:
    return [
        (t.year, t.month, t.day, t.hour, t.minute, t.second) for t in to_cftime(values, calendar)
    ]


def _align(stores: list[StoreFeatures], cube) -> tuple[np.ndarray, list[tuple]]:
    """Steps of ``cube`` that the stores cover (all stores must cover the same ones), and
    their times as ``_time_key`` tuples."""
    first = stores[0]
    key = _time_key(first.time, cube.calendar)
    for s in stores[1:]:
        if _time_key(s.time, cube.calendar) != key:
            raise DataError(
                f"{s.path}: covers other times than {first.path} "
                f"({len(s.time)} steps from {s.time[0]} vs {len(first.time)} from {first.time[0]})"
            )
    where = {k: i for i, k in enumerate(_time_key(cube.time.values, cube.calendar))}
    steps = np.array([where.get(k, -1) for k in key])
    if (steps < 0).any():
        bad = int(np.argmax(steps < 0))
        raise DataError(
            f"{first.path}: time {first.time[bad]} is not in the input {cube.source_label} "
            f"(the store has {len(key)} steps, {first.time[0]} to {first.time[-1]}; the input "
            f"{cube.shape[0]}, {cube.time.values[0]} to {cube.time.values[-1]})"
        )
    return steps, key


def _measure(name: str, feats: Features, z_all: np.ndarray, targets, data: InputData,
             opts: EvaluateOptions, window: int) -> FeatureReport:  # fmt: skip
    return FeatureReport(
        name=name,
        features=int(z_all.shape[1]),
        probe=probe(feats, targets, opts.leads, window=window, folds=opts.folds,
                    repeats=opts.repeats),
        effective_rank=metrics.effective_rank(z_all),
        seasonal_share=metrics.seasonal_share(z_all, data.cal),
        month_jump=metrics.month_jump(z_all, data.cal),
    )


def evaluate(
    stores: Sequence[str],
    inputs: Sequence[str],
    out: str | os.PathLike,
    options: EvaluateOptions | None = None,
    *,
    perturbed: Sequence[str] = (),
    progress=None,
) -> Report:
    """Evaluate embedding ``stores`` of ``inputs`` into the folder ``out``; see the module."""
    opts = options or EvaluateOptions()
    _check_options(stores, opts)
    out = Path(out)
    present = existing_output(
        out, inputs=[*inputs, *stores, *perturbed], ours=is_evaluation_dir, what="evaluation folder"
    )
    if present and is_evaluation_dir(out) and not opts.overwrite:
        raise DataError(f"{out}: already holds a report (use --overwrite to replace it)")

    loaded = [load_store(p, opts.tiles) for p in stores]
    shaken = [load_store(p, opts.tiles) for p in perturbed]
    channels = loaded[0].channels
    for s in loaded[1:] + shaken:
        if s.channels != channels:
            raise DataError(f"{s.path}: embeds channels {s.channels}, {loaded[0].path} {channels}")
    cube = _open_input(inputs, channels)
    steps, keys = _align(loaded + shaken, cube)
    data = read_inputs(cube, opts.indices, steps=steps, max_cells=opts.max_cells, progress=progress)
    targets = dict(data.indices)
    auto = eof_targets(data, opts.eof_targets) if opts.eof_targets else {}
    targets.update(auto)
    described = {
        s.name: {"kind": "index", "variable": s.variable, "box": list(s.box)} for s in opts.indices
    }
    described.update({k: {"kind": "eof", "variable": k.rsplit("_pc", 1)[0]} for k in auto})
    window = max(s.window for s in loaded)

    task = progress.start("evaluating", total=len(loaded) + 2) if progress else None
    k = loaded[0].z.shape[1]
    eof = EOFFeatures(data.field, k)
    unseen = _Unseen(keys, eof, targets, opts)
    reports = []
    for s in loaded:
        reports.append(_store_report(s, shaken, targets, data, opts, unseen))
        if task is not None:
            progress.advance(task, 1)

    rand = RandomFeatures(data.field, k)
    baselines = {
        "eof": _measure("eof", eof, eof.transform(np.arange(len(steps))), targets, data, opts, window),
        "random": _measure("random", rand, rand.values, targets, data, opts, window),
    }  # fmt: skip
    if task is not None:
        progress.advance(task, 2)
        progress.finish(task)
    n = len(loaded)
    cka = [[metrics.linear_cka(a.z, b.z) for b in loaded] for a in loaded]
    report = Report(
        inputs=list(inputs),
        leads=list(opts.leads),
        folds=opts.folds,
        repeats=opts.repeats,
        targets=described,
        stores=reports,
        baselines=baselines,
        stability={"paths": [s.path for s in loaded], "cka": cka if n else []},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        field_grid=tuple(int(v) for v in data.coarse_shape),
    )
    if present:
        remove_output(out)
    write(report, out)
    return report


def _check_options(stores: Sequence[str], opts: EvaluateOptions) -> None:
    if not stores:
        raise DataError("evaluate needs at least one embeddings store")
    if any(lead < 0 for lead in opts.leads) or not opts.leads:
        raise DataError(f"--leads must be whole numbers >= 0, got {list(opts.leads)}")
    if not opts.indices and not opts.eof_targets:
        raise DataError("nothing to probe: give an --index or keep --eof-targets above 0")
    if opts.folds < 2:
        raise DataError(f"--folds must be at least 2, got {opts.folds}")
    if opts.repeats < 1:
        raise DataError(f"--repeats must be at least 1, got {opts.repeats}")
    if opts.max_cells < 1:
        raise DataError(f"--field-cells must be at least 1, got {opts.max_cells}")


_STAMP = re.compile(r"(-?\d+)-(\d+)-(\d+)(?:[ T](\d+):(\d+):(\d+))?")


def _stamp_key(text: str) -> tuple | None:
    """``(year, month, day, hour, minute, second)`` of a recorded time such as
    ``2000-01-16 00:00:00`` or ``2000-01-16T00:00:00.000000000``; None if it is not one."""
    m = _STAMP.match(text.strip())
    return tuple(int(v or 0) for v in m.groups()) if m else None


class _Unseen:
    """Probes on the steps a store's encoder never trained on (its recorded training range),
    with the EOF baseline scored on the same steps (its predictions kept per range and window:
    the seeds of one recipe share them) and, for a store whose first components are the
    input's EOFs (``model.eof_components``, then any lagged ones), those components alone:
    whether the learned rest adds to them on new time or only on the time it trained on. The comparison with the
    EOFs is also refitted without each fifth of the training steps (``eof_refit_difference``):
    on a short record which steps the probe and the EOFs are fitted on can decide it."""

    def __init__(self, keys: list[tuple], eof: Features, targets, opts: EvaluateOptions):
        self.keys, self.eof, self.targets, self.opts = keys, eof, targets, opts
        self.baseline: dict[tuple, dict] = {}

    def measure(self, s: StoreFeatures) -> dict:
        if s.train_range is None:
            return {}
        first, last = (_stamp_key(v) for v in s.train_range)
        if first is None or last is None:
            return {}
        mask = np.array([not (first <= k <= last) for k in self.keys])
        out = {"train_range": list(s.train_range), "steps": int(mask.sum())}
        if not mask.any():
            return out
        args = dict(leads=self.opts.leads, window=s.window, unseen=mask)
        key = (s.train_range, s.window)
        if key not in self.baseline:
            self.baseline[key] = (unseen_predictions(self.eof, self.targets, **args),
                                  unseen_refits(self.eof, self.targets, **args))  # fmt: skip
        z = np.asarray(s.z)
        own_pred = unseen_predictions(z, self.targets, **args)
        eof_pred, eof_refits = self.baseline[key]
        own, eof = (prediction_scores(p, self.targets) for p in (own_pred, eof_pred))
        out["probe"], out["eof_probe"] = own["r2"], eof["r2"]
        out["correlation"], out["eof_correlation"] = own["correlation"], eof["correlation"]
        out["eof_difference"] = paired_difference(own_pred, eof_pred, self.targets)
        out["eof_refit_difference"] = refit_difference(
            own_pred, eof_pred, unseen_refits(z, self.targets, **args), eof_refits, self.targets
        )
        k = s.eof_components
        if 0 < k < z.shape[1]:  # what the learned components add to the store's own EOFs
            half = unseen_predictions(z[:, :k], self.targets, **args)
            out["learned_difference"] = paired_difference(own_pred, half, self.targets)
        return out


def _store_report(s, shaken, targets, data, opts: EvaluateOptions, unseen: _Unseen) -> StoreReport:
    """Everything measured on one store: probes (also on time its encoder never saw),
    use of the embedding, regimes, robustness against the perturbed stores made with the same
    checkpoint, attention."""
    r = _measure(s.path, np.asarray(s.z), s.z, targets, data, opts, s.window)
    rep = StoreReport(**vars(r), path=s.path, cell=s.cell, embedding_dim=s.embedding_dim,
                      tiles=s.tiles, window=s.window)  # fmt: skip
    rep.unseen = unseen.measure(s)
    rep.component_std = [float(v) for v in metrics.component_std(s.z)]
    rep.regimes = regimes(s.z, data.cal.month, opts.regimes)
    for p in shaken:
        if p.checkpoint == s.checkpoint and p.path != s.path:
            rep.robustness[p.path] = {"perturb": p.perturb, **metrics.relative_change(s.z, p.z)}
    if s.dataset is not None:
        rep.attention = attention.summarize(s.dataset, s.queries)
    return rep


__all__ = ["Calendar", "EvaluateOptions", "IndexSpec", "evaluate"]
