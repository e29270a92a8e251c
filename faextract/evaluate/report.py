"""The evaluation report: typed results, ``report.json``, ``report.md`` and figures.

``report.json`` (schema ``faextract_evaluation = 1``)::

    {"faextract_evaluation": 1, "faextract_version", "created", "inputs": [...],
     "leads": [0, 1, 3], "folds": 5, "targets": {name: {"kind": "index"|"eof", ...}},
     "stores": [{"path", "cell", "embedding_dim", "features", "tiles", "window",
                 "probe": {target: {lead: r2}}, "component_std": [...], "effective_rank",
                 "seasonal_share", "month_jump", "regimes": {k: {...}},
                 "robustness": {perturbed path: {...}}, "attention": {...}}],
     "baselines": {"eof": {"components", "probe", "effective_rank", "seasonal_share"},
                   "random": {...}},
     "stability": {"paths": [...], "cka": [[...]]}}

Leads are JSON object keys, so they are strings there (``"0"``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPORT_VERSION = 1


@dataclass
class FeatureReport:
    """What is measured of one feature set (a store or a baseline)."""

    name: str
    features: int
    probe: dict[str, dict[int, float]]
    effective_rank: float
    seasonal_share: float
    month_jump: float | None = None


@dataclass
class StoreReport(FeatureReport):
    path: str = ""
    cell: str = ""
    embedding_dim: int = 0
    tiles: str = "none"
    window: int = 1
    component_std: list[float] = field(default_factory=list)
    regimes: dict[int, dict] = field(default_factory=dict)
    robustness: dict[str, dict[str, float]] = field(default_factory=dict)
    attention: dict = field(default_factory=dict)
    # probes on the steps the encoder never trained on: {"train_range", "steps", "probe",
    # "eof_probe"} (the EOF baseline on the same steps), "correlation", "eof_correlation" and
    # "eof_difference": {target: {lead: [R² - the EOF baseline's R², low, high]}} (the 90%
    # block-bootstrap interval, probe.unseen_difference); "eof_refit_difference": {target:
    # {lead: [the same difference, least, greatest]}} over the probes (and the EOFs) refitted
    # without each fifth of the training steps (probe.refit_difference); "learned_difference"
    # (stores with EOF components): the same as eof_difference for z against its own first
    # eof_components (and lagged ones) alone, whether the learned components add on new time; empty when the
    # store records no range
    unseen: dict = field(default_factory=dict)


@dataclass
class Report:
    inputs: list[str]
    leads: list[int]
    folds: int
    targets: dict[str, dict]
    stores: list[StoreReport]
    baselines: dict[str, FeatureReport]
    stability: dict
    created: str = ""
    field_grid: tuple[int, int] = (0, 0)  # lat x lon cells per variable of the anomaly field
    repeats: int = 1  # placements of the blocks averaged (probe's ``repeats``)

    def to_json(self) -> dict:
        from faextract import __version__

        def clean(obj):
            if isinstance(obj, dict):
                return {str(k): clean(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return [clean(v) for v in obj]
            if isinstance(obj, float | np.floating):
                v = float(obj)
                return None if math.isnan(v) else round(v, 6)
            if isinstance(obj, np.integer):
                return int(obj)
            return obj

        baselines = {}
        for k, b in self.baselines.items():
            d = asdict(b)
            d["components"] = d.pop("features")
            baselines[k] = d
        stores = []
        for s in self.stores:
            d = asdict(s)
            d.pop("name")
            stores.append(d)
        return clean(
            {
                "faextract_evaluation": REPORT_VERSION,
                "faextract_version": __version__,
                "created": self.created,
                "inputs": self.inputs,
                "leads": self.leads,
                "folds": self.folds,
                "repeats": self.repeats,
                "targets": self.targets,
                "stores": stores,
                "baselines": baselines,
                "stability": self.stability,
                "field_grid": list(self.field_grid),
            }
        )


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _columns(report: Report) -> list[tuple[str, FeatureReport]]:
    cols: list[tuple[str, FeatureReport]] = []
    names = [Path(s.path).name for s in report.stores]
    for s, n in zip(report.stores, names, strict=True):
        label = n if names.count(n) == 1 else s.path
        cols.append((label, s))
    cols += [(f"{k} baseline", b) for k, b in report.baselines.items()]
    return cols


def _unseen_table(report: Report) -> str:
    """The index probes on time each encoder never saw, beside the EOF baseline's on the
    same steps ("" when no store records its training range)."""
    stores = [s for s in report.stores if s.unseen.get("probe")]
    if not stores:
        return ""
    index_targets = [t for t, d in report.targets.items() if d["kind"] == "index"]
    targets = index_targets or list(report.targets)[:2]
    cells = [(t, lead) for t in targets for lead in report.leads]
    text = (
        "\n## On time the encoder never saw\n\nThe probes fitted on the steps inside the "
        "encoder's training range and scored on those outside it (the blocks above include "
        "steps the encoder trained on); the EOF baseline on the same steps in brackets.\n\n"
    )
    for score, own, eof, note in (
        ("R²", "probe", "eof_probe", ""),
        ("r", "correlation", "eof_correlation",
         "\nR² is taken around the mean of the unseen steps' targets, so a level the training "
         "range did not have costs R² however closely the predictions follow the targets; "
         "the correlation r of the predictions with the targets says how closely they "
         "follow.\n\n"),
    ):  # fmt: skip
        shown = [s for s in stores if own in s.unseen]
        if not shown:
            continue
        text += note + "| store | unseen steps | "
        text += " | ".join(f"{score} {t}, lead {lead}" for t, lead in cells)
        text += " |\n|---|---|" + "---|" * len(cells) + "\n"
        for s in shown:
            u = s.unseen
            values = [f"{_fmt(u[own][t].get(lead))} ({_fmt(u[eof][t].get(lead))})"
                      for t, lead in cells]  # fmt: skip
            text += f"| {Path(s.path).name} | {u['steps']} | " + " | ".join(values) + " |\n"
    text += _interval_table(
        stores, cells, "eof_difference", "R² - EOF",
        "R² minus the EOF baseline's on the same unseen steps, and in brackets the range that "
        "holds 90% of the same difference over block-bootstrap resamples of those steps: a "
        "range that holds 0 means these steps cannot tell the two apart.",
    )
    text += _interval_table(
        stores, cells, "eof_refit_difference", "R² - EOF",
        "The same difference, and in brackets its least and greatest value over the probes "
        "(and the EOFs) fitted on all the training steps and refitted without each fifth of "
        "them in turn: a range that holds 0 means another stretch of training steps could "
        "turn the comparison around.",
    )
    text += _interval_table(
        stores, cells, "learned_difference", "R² - EOF part",
        "R² of the whole embedding minus that of its EOF components alone (its first "
        "`eof_components`, `model.eof_components`, and the lagged ones after them, "
        "`model.eof_lag_components`) on the same unseen steps, with the same "
        "90% range: below 0, a probe fitted on the training range trusts the learned "
        "components for what they memorized there, and the EOF components alone carry more "
        "on new time.",
    )  # fmt: skip
    return text


def _interval_table(stores, cells, key: str, label: str, note: str) -> str:
    """The ``unseen[key]`` differences of the stores that have them, one row per store, after
    ``note``; empty when none has them."""
    shown = [s for s in stores if key in s.unseen]
    if not shown:
        return ""
    text = f"\n{note}\n\n| store | " + " | ".join(f"{label} {t}, lead {lead}" for t, lead in cells)
    text += " |\n|---|" + "---|" * len(cells) + "\n"
    for s in shown:
        values = [_interval(s.unseen[key][t].get(lead)) for t, lead in cells]
        text += f"| {Path(s.path).name} | " + " | ".join(values) + " |\n"
    return text


def _interval(v) -> str:
    """``+0.05 [-0.10, +0.21]`` of a ``(value, low, high)``; ``-`` where not scored."""
    if v is None or any(x is None or math.isnan(x) for x in v):
        return "-"
    return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*v)


def markdown(report: Report) -> str:
    """One side-by-side table (feature sets as columns), then the per-target probe table."""
    cols = _columns(report)
    head = "| | " + " | ".join(c for c, _ in cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    rows = []

    def row(label, values):
        rows.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |")

    stores = [f for _, f in cols]
    row("features", [f.features for f in stores])
    index_targets = [t for t, d in report.targets.items() if d["kind"] == "index"]
    eof_targets = [t for t, d in report.targets.items() if d["kind"] == "eof"]
    for lead in report.leads:
        for t in index_targets:
            row(f"R² {t}, lead {lead}", [f.probe[t].get(lead) for f in stores])
        if eof_targets:
            row(
                f"R² mean of {len(eof_targets)} EOF PCs, lead {lead}",
                [float(np.nanmean([f.probe[t].get(lead, np.nan) for t in eof_targets]))
                 for f in stores],
            )  # fmt: skip
    row("effective rank", [f.effective_rank for f in stores])
    row("seasonal share", [f.seasonal_share for f in stores])
    row("month-boundary jump", [f.month_jump for f in stores])
    storeish = [f if isinstance(f, StoreReport) else None for f in stores]

    def srow(label, fn):
        row(label, [fn(f) if f is not None else None for f in storeish])

    srow("median component std", lambda f: float(np.median(f.component_std)))
    srow("best silhouette (k)", lambda f: _best_regime(f.regimes))
    srow(
        "robustness: change / variability",
        lambda f: "; ".join(
            f"{Path(p).name}: {r['relative_to_variability']:.3f}" for p, r in f.robustness.items()
        )
        or None,
    )
    srow(
        "attention temporal CV",
        lambda f: float(np.nanmean(list(f.attention["temporal_cv"].values())))
        if f.attention
        else None,
    )
    text = "# faextract evaluation\n\n"
    text += (
        f"Inputs: {', '.join(report.inputs)}. Held-out R² of ridge probes, {report.folds} "
        "contiguous time blocks, a gap of one window + lead between training and test rows"
        + (f", averaged over {report.repeats} placements of the blocks" if report.repeats > 1 else "")
        + ". "
        f"EOF and random baselines and EOF targets on a {report.field_grid[0]} x "
        f"{report.field_grid[1]} anomaly field per variable.\n\n"
    )
    text += head + "\n".join(rows) + "\n"
    if report.stability.get("paths") and len(report.stability["paths"]) > 1:
        text += "\n## Stability (linear CKA between stores)\n\n"
        paths = report.stability["paths"]
        text += "| | " + " | ".join(Path(p).name for p in paths) + " |\n"
        text += "|---|" + "---|" * len(paths) + "\n"
        for p, r in zip(paths, report.stability["cka"], strict=True):
            text += f"| {Path(p).name} | " + " | ".join(_fmt(v) for v in r) + " |\n"
    text += _unseen_table(report)
    text += "\n## Probe R² per target\n\n"
    text += "| target | lead | " + " | ".join(c for c, _ in cols) + " |\n"
    text += "|---|---|" + "---|" * len(cols) + "\n"
    for t in report.targets:
        for lead in report.leads:
            text += f"| {t} | {lead} | " + " | ".join(
                _fmt(f.probe[t].get(lead)) for f in stores
            ) + " |\n"
    return text


def _best_regime(regimes: dict[int, dict]) -> str | None:
    if not regimes:
        return None
    k, r = max(regimes.items(), key=lambda kv: kv[1]["silhouette"])
    return f"{r['silhouette']:.3f} ({k})"


def figures(report: Report, out: Path) -> list[str]:
    """``probe.png`` (held-out R² per target, a panel per lead) and, with two or more stores,
    ``stability.png``. Needs matplotlib; returns nothing without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    cols = _columns(report)
    targets = list(report.targets)
    fig, axes = plt.subplots(
        len(report.leads), 1, figsize=(max(6, 0.5 * len(targets) * len(cols) / 2), 3 * len(report.leads)),
        squeeze=False,
    )  # fmt: skip
    width = 0.8 / len(cols)
    for ax, lead in zip(axes[:, 0], report.leads, strict=True):
        for j, (label, f) in enumerate(cols):
            vals = [f.probe[t].get(lead, np.nan) for t in targets]
            ax.bar(np.arange(len(targets)) + j * width, np.clip(vals, -0.5, 1), width, label=label)
        ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets, rotation=60, ha="right",
                      fontsize=7)  # fmt: skip
        ax.set_ylabel(f"held-out R², lead {lead}")
        ax.set_ylim(-0.5, 1)
        ax.axhline(0, color="k", lw=0.5)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    written = [out / "probe.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)
    cka = report.stability.get("cka")
    if cka and len(cka) > 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(np.array(cka, dtype=float), vmin=0, vmax=1, cmap="viridis")
        names = [Path(p).name for p in report.stability["paths"]]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im, ax=ax, label="linear CKA")
        fig.tight_layout()
        written.append(out / "stability.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return [os.fspath(p) for p in written]


def write(report: Report, out: Path) -> list[str]:
    """Write ``report.json``, ``report.md`` and the figures into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))
    return [str(out / "report.json"), str(out / "report.md"), *figures(report, out)]
