"""Representation quality side by side: FAConvLSTM2D, ConvLSTM2D and MinConvGRU encoders.

Trains each cell at a matched parameter budget with two seeds on a generated cube long enough
to hold out whole years (``faextract.testing.synthetic_cube``: a planted ENSO-like index and a
lagged teleconnection), embeds the whole cube (and a copy perturbed with 5% noise), and runs
``faextract.evaluate`` on all stores in one go. Prints one table:

- held-out R² of the planted index (the ENSO box's SST anomaly) at leads 0, 1 and 3, and of
  the teleconnection box's t2m anomaly at lead 0, against the EOF baseline with as many PCs;
  and the index's R² on the months the encoders never trained on (their validation range:
  probes fitted on the training range), the EOF baseline on the same months; and a
  reference row: the same probes on the index at t and the phase of the planted oscillation
  (what knowing the process's state exactly allows; lead 0 is 1 by construction);
- effective rank, month-boundary jump, linear CKA between the two seeds, robustness
  (``||z' - z|| / ||z - mean z||`` under 5% noise), best k-means silhouette;
- for FAConvLSTM2D: the percentile of the teleconnection box in the ENSO query's attention maps
  (where ENSO attends, and how strongly each point attends to ENSO).

Encoders train on the first 85% of the record (the rest is their validation range); the probes
use evaluate's protocol (``--folds`` (5) contiguous held-out blocks over the whole record, a
gap of one window + lead; ``--repeats`` placements of the blocks averaged). Every number comes
from this one run.

    python benchmarks/bench_representation.py               # the README table (~20 min, 2 cores)
    python benchmarks/bench_representation.py --quick       # a smoke run (~3 min)
    python benchmarks/bench_representation.py --cube daily --cells faconvlstm --seeds 0
    python benchmarks/bench_representation.py --cube decade --cube-seed 1 --cells faconvlstm
    python benchmarks/bench_representation.py --cube short --cells faconvlstm   # 11 years, 24 x 48
    python benchmarks/bench_representation.py --years 13 --cells faconvlstm     # 13 years, 24 x 48

``--cube-seed`` draws another realization of the same cube (another noise, another index
history; the README's tables use 7). On the decade cube the scores on the 20 months the
encoder never saw depend on which 20 months they are as much as on the model: the EOF
baseline's index R² there ranges from -0.9 to 0.45 over cube seeds 1-5 and 7, so a setting
is judged by its difference from the EOFs over several cube seeds, not on one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _env  # noqa: F401  (process settings of `faextract train`; before torch)
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import table  # noqa: E402

from faextract.config import load_config  # noqa: E402
from faextract.data.perturb import Perturbation  # noqa: E402
from faextract.embed import EmbedOptions, embed  # noqa: E402
from faextract.evaluate import EvaluateOptions, IndexSpec, evaluate  # noqa: E402
from faextract.evaluate.attention import box_percentile  # noqa: E402
from faextract.outputs import PREEMPTED_FILE  # noqa: E402
from faextract.store import open_embeddings  # noqa: E402
from faextract.testing import (  # noqa: E402
    ENSO_BOX,
    ENSO_PERIOD_YEARS,
    TELECONNECTION_BOX,
    synthetic_cube,
    write_netcdf,
)
from faextract.train import train  # noqa: E402

# Monthly means: mid-month steps, a 3-month teleconnection lag.
MONTHLY = dict(freq_days=365 / 12, start="2000-01-16", teleconnection_lag=3)
CUBES = {
    # 20 years of monthly means.
    "monthly": dict(MONTHLY, nt=240),
    # The 20-year cube's grid, variables and process over 15 and 11 years (the decade's
    # length; generated over that length, not the first years of the 20-year draw):
    # separates what the record's length does from what the grid does.
    "mid": dict(MONTHLY, nt=180),
    "short": dict(MONTHLY, nt=132),
    # 6 years of daily data, a 10-day lag (the sample's kind of data, 3x longer).
    "daily": dict(nt=6 * 365, freq_days=1.0, start="2000-01-01", teleconnection_lag=10),
    # Like the real-data trial of the issue: 11 years of monthly means of two variables
    # (u10, sp) on a 2.5 degree grid (72 x 144).
    "decade": dict(MONTHLY, nt=132, nlat=72, nlon=144, variables=("u10", "sp")),
}
CELLS = ("faconvlstm", "convlstm", "minconvgru")
INDICES = {
    "sst": IndexSpec("enso", "sst", ENSO_BOX),
    "t2m": IndexSpec("tele", "t2m", TELECONNECTION_BOX),
    # the trial's equatorial-Pacific zonal-wind index (5S-5N, 160-210E)
    "u10": IndexSpec("enso", "u10", (-5.0, 5.0, 160.0, 210.0)),
    "sp": IndexSpec("tele", "sp", TELECONNECTION_BOX),
}


def _params(cfg, channels: int) -> int:
    """Parameters of the encoder and the spatial decoders (what differs between cells): the
    embedding decoder and the head's grid, the same for every cell, are left out, so budgets
    are matched on the part the cells change. The table reports whole networks."""
    from faextract.models.autoencoder import ClimateAutoencoder

    m = cfg.model
    net = ClimateAutoencoder(
        channels, cell=m.cell, filters=m.filters, layers=m.layers, kernel_size=m.kernel_size,
        stem_channels=m.stem_channels, downsample=m.downsample, embedding_dim=m.embedding_dim,
        cell_options=dict(m.cell_options), objective=m.objective, clusters=m.clusters,
        periodic=True,
    )  # fmt: skip
    return sum(p.numel() for p in net.parameters())


def matched_filters(base_overrides: list[str], cell: str, budget: int, channels: int) -> int:
    """The width at which ``cell``'s whole network has about ``budget`` parameters."""
    best, best_gap = 4, float("inf")
    for filters in range(4, 129, 2):
        cfg = load_config(None, [*base_overrides, f"model.cell={cell}", f"model.filters={filters}",
                                 "model.cell_options={}"])  # fmt: skip
        gap = abs(_params(cfg, channels) - budget)
        if gap < best_gap:
            best, best_gap = filters, gap
    return best


def _train(cfg, run_dir: Path, name: str, **how) -> None:
    """Train one encoder; a run stopped by a signal (SIGTERM, SIGUSR1) ends the benchmark
    (its best.pt is not the finished model's), and the same ``--workdir`` resumes it."""
    if train(cfg, run_dir, plain_progress=True, **how).status == "preempted":
        sys.exit(f"bench_representation: training {name} was stopped by a signal; "
                 f"rerun with --workdir {run_dir.parent} to resume it")


def run(args) -> list[dict]:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-representation-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = {"nlat": 24, "nlon": 48, "variables": ("sst", "t2m", "sp", "u10"), **CUBES[args.cube]}
    name = args.cube
    if args.years:
        spec["nt"] = 12 * args.years
        name = f"{args.cube}-{args.years}y"
    variables = spec["variables"]
    cube = root / f"{name}-seed{args.cube_seed}.nc"
    # runs and stores are reused by name: a workdir holds the runs of one cube only
    other = sorted(p.name for p in root.glob("*.nc") if p != cube)
    if other:
        print(f"bench_representation: {root} holds runs of another cube ({other[0]}); use "
              f"another --workdir for {name} --cube-seed {args.cube_seed}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    if not cube.exists():
        write_netcdf(synthetic_cube(calendar="noleap", seed=args.cube_seed, **spec), cube)
    base = [f"data.paths=[{cube}]", *args.set]
    if args.quick:
        base += ["train.epochs=2", "train.steps=0"]  # steps would override epochs
    fa_cfg = load_config(args.config, [*base, "model.cell=faconvlstm"])
    budget = _params(fa_cfg, len(variables))
    stores, meta = [], {}
    for cell in args.cells:
        extra = [f"model.cell={cell}"]
        if cell != "faconvlstm":
            width = matched_filters(base, cell, budget, len(variables))
            extra += [f"model.filters={width}", "model.cell_options={}"]
        for seed in args.seeds:
            name = f"{cell}-s{seed}"
            run_dir = root / name
            cfg = load_config(args.config, [*base, *extra, f"train.seed={seed}"])
            t0 = time.perf_counter()
            if (run_dir / PREEMPTED_FILE).exists():  # stopped by a signal: resume it
                _train(cfg, run_dir, name, resume=True)
            elif not (run_dir / "best.pt").exists():
                _train(cfg, run_dir, name, overwrite=True)
            seconds = time.perf_counter() - t0
            ckpt = run_dir / "best.pt"
            queries = {"enso": ENSO_BOX} if cell == "faconvlstm" else {}
            for suffix, perturb in (("", None), ("-noise", "noise=0.05")):
                out = root / f"{name}{suffix}.zarr"
                embed([str(cube)], str(ckpt), str(out),
                      EmbedOptions(queries=queries, overwrite=True, device="cpu",
                                   perturb=Perturbation.parse(perturb)))  # fmt: skip
            stores.append(str(root / f"{name}.zarr"))
            from faextract.checkpoint import load_checkpoint

            net = load_checkpoint(ckpt).build_model()  # trained weights; buffers do not count
            meta[str(root / f"{name}.zarr")] = dict(
                cell=cell, seed=seed, params=sum(p.numel() for p in net.parameters()),
                train_s=seconds,
            )  # fmt: skip
    # one "enso" index (SST where there is SST, else the zonal wind) and one "tele" index
    indices = [INDICES[v] for v in ("sst", "u10") if v in variables][:1]
    indices += [INDICES[v] for v in ("t2m", "sp") if v in variables][:1]
    opts = EvaluateOptions(indices=indices, leads=(0, 1, 3), eof_targets=args.eof_targets,
                           folds=args.folds, repeats=args.repeats, overwrite=True)  # fmt: skip
    perturbed = [s.replace(".zarr", "-noise.zarr") for s in stores]
    report = evaluate(stores, [str(cube)], root / "evaluation", opts, perturbed=perturbed)
    (root / "evaluation" / "meta.json").write_text(json.dumps(meta, indent=1))
    reference = reference_scores(cube, indices[0], 365.0 / spec["freq_days"], report, args)
    return summarize(report, meta, reference)


def reference_scores(cube: Path, index: IndexSpec, steps_per_year: float, report, args) -> dict:
    """What the planted process itself allows a linear probe: the index at t and the phase of
    the planted oscillation (its sine and cosine), probed in the same protocol as the stores
    (the same blocks, gap and unseen months). Lead 0 is 1 by construction; at leads >= 1 it is
    the skill of knowing the index's state exactly (not a strict ceiling: the box also holds
    red noise, whose own state it does not separate). ``{"whole": {lead: r2}, "unseen":
    {lead: r2}}``."""
    from faextract.data.cube import open_cube
    from faextract.evaluate.inputs import read_inputs
    from faextract.evaluate.probe import probe_scores

    y = read_inputs(open_cube([str(cube)], None), [index]).indices[index.name]
    phase = 2 * np.pi * np.arange(len(y)) / (ENSO_PERIOD_YEARS * steps_per_year)
    feats = np.c_[y, np.sin(phase), np.cos(phase)]
    target = {index.name: y}
    store = report.stores[0]
    out = {"whole": probe_scores(feats, target, leads=report.leads, window=store.window,
                                 folds=args.folds, repeats=args.repeats)["r2"][index.name]}  # fmt: skip
    unseen = int(store.unseen.get("steps", 0))
    if unseen:
        mask = np.arange(len(y)) >= len(y) - unseen  # the validation range ends the record
        out["unseen"] = probe_scores(feats, target, leads=report.leads, window=store.window,
                                     unseen=mask)["r2"][index.name]  # fmt: skip
    return out


def summarize(report, meta: dict, reference: dict | None = None) -> list[dict]:
    by_path = {s.path: s for s in report.stores}
    paths = report.stability["paths"]
    cka = np.array(report.stability["cka"], dtype=float)
    rows = []
    eof = report.baselines["eof"]
    rows.append({
        "features": f"EOF baseline ({eof.features} PCs)",
        **{f"ENSO R² lead {L}": f"{eof.probe['enso'][L]:.3f}" for L in report.leads},
        "tele R² lead 0": f"{eof.probe['tele'][0]:.3f}",
        "ENSO R² unseen, lead 0 / 1 / 3": _unseen(report.stores[0].unseen.get("eof_probe")),
        "EOF-PC R² mean": _eof_mean(eof, report),
        "eff. rank": f"{eof.effective_rank:.1f}",
    })  # fmt: skip
    if reference:
        rows.append({
            "features": "reference: the index at t + the oscillation's phase",
            **{f"ENSO R² lead {L}": f"{reference['whole'][L]:.3f}" for L in report.leads},
            "ENSO R² unseen, lead 0 / 1 / 3": _unseen(
                {"enso": reference["unseen"]} if "unseen" in reference else None
            ),
        })  # fmt: skip
    cells = list(dict.fromkeys(m["cell"] for m in meta.values()))
    for cell in cells:
        mine = [p for p in paths if meta[p]["cell"] == cell]
        reps = [by_path[p] for p in mine]

        def mean(fn, reps=reps):
            vals = [fn(r) for r in reps]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            if not vals:
                return "-"
            spread = f" ±{(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else ""
            return f"{np.mean(vals):.3f}{spread}"

        idx = [paths.index(p) for p in mine]
        pair = [cka[i, j] for i in idx for j in idx if i < j]
        row = {
            "features": f"{cell} ({meta[mine[0]]['params']:,} params)",
            **{f"ENSO R² lead {L}": mean(lambda r, L=L: r.probe["enso"][L]) for L in report.leads},
            "tele R² lead 0": mean(lambda r: r.probe["tele"][0]),
            "ENSO R² unseen, lead 0 / 1 / 3": " / ".join(
                mean(lambda r, L=L: r.unseen.get("probe", {}).get("enso", {}).get(L))
                for L in report.leads
            ),
            "EOF-PC R² mean": mean(lambda r: _eof_mean_value(r, report)),
            "eff. rank": mean(lambda r: r.effective_rank),
            "month jump": mean(lambda r: r.month_jump),
            "CKA seeds": f"{np.mean(pair):.3f}" if pair else "-",
            "robustness": mean(lambda r: next(iter(r.robustness.values()))["relative_to_variability"]
                               if r.robustness else None),
            "silhouette": mean(lambda r: max((g["silhouette"] for g in r.regimes.values()),
                                             default=None)),
            "tele in ENSO map": mean(lambda r: _tele_percentile(r.path, "query")),
            "ENSO in tele's": mean(lambda r: _tele_percentile(r.path, "from")),
            "train s": f"{np.mean([meta[p]['train_s'] for p in mine]):.0f}",
        }  # fmt: skip
        rows.append(row)
    return rows


def _unseen(probe: dict | None) -> str:
    """The ENSO index's R² at each lead on the months the encoders never trained on."""
    if not probe:
        return "-"
    return " / ".join(f"{v:.3f}" for v in probe["enso"].values())


def _eof_mean_value(feat, report) -> float:
    eofs = [t for t, d in report.targets.items() if d["kind"] == "eof"]
    return float(np.mean([feat.probe[t][0] for t in eofs])) if eofs else float("nan")


def _eof_mean(feat, report) -> str:
    v = _eof_mean_value(feat, report)
    return f"{v:.3f}" if np.isfinite(v) else "-"


def _tele_percentile(path: str, direction: str) -> float | None:
    """Percentile of the teleconnection box in the ENSO query's map: ``query`` is where ENSO
    attends, ``from`` how strongly each point attends to ENSO (the teleconnection box, driven
    by ENSO, should)."""
    ds = open_embeddings(path)
    name = f"attention_{direction}_enso"
    if name not in ds:
        return None
    m = ds[name].mean(("attention_time", "head")).values
    return box_percentile(m, ds["lat"].values, ds["lon"].values, TELECONNECTION_BOX)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cube", choices=sorted(CUBES), default="monthly")
    ap.add_argument("--years", type=int, default=0,
                    help="the monthly cube generated over N years (another draw, not the first N "
                    "years of the 20-year one; --cube monthly --years 11 is --cube short)")  # fmt: skip
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells")
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--cube-seed", type=int, default=7,
                    help="the generated cube's random seed (the README's tables: 7)")  # fmt: skip
    ap.add_argument(
        "--config",
        help="training config (default: configs/monthly.yaml for monthly cubes, "
        "configs/sample.yaml for the daily one)",
    )
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--eof-targets", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5, help="held-out time blocks of the probes")
    ap.add_argument("--repeats", type=int, default=1,
                    help="placements of the blocks averaged (evaluate --repeats)")  # fmt: skip
    ap.add_argument("--workdir", help="keep runs here (reused when present)")
    ap.add_argument("--quick", action="store_true", help="2 epochs, one seed, a smoke run")
    args = ap.parse_args()
    monthly = [name for name, cube in CUBES.items() if cube["freq_days"] == MONTHLY["freq_days"]]
    if args.years and (args.cube not in monthly or args.years < 4):
        ap.error(f"--years needs a monthly cube ({', '.join(monthly)}) and 4 years or more; "
                 f"got --cube {args.cube} --years {args.years}")  # fmt: skip
    if args.config is None:
        name = "sample.yaml" if args.cube == "daily" else "monthly.yaml"
        args.config = str(HERE.parent / "configs" / name)
    args.cells = [c for c in args.cells.split(",") if c]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.quick:
        args.seeds = args.seeds[:1]
    os.environ.setdefault("FAEXTRACT_PLAIN_PROGRESS", "1")
    t0 = time.perf_counter()
    rows = run(args)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    years = f" over {args.years} years" if args.years else ""
    title = (f"Representation quality, {args.cube} cube{years} (seed {args.cube_seed}), "
             f"config {Path(args.config).name}"
             f"{' ' + ' '.join(args.set) if args.set else ''}, {args.folds} blocks x "
             f"{args.repeats} placements ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print(table(rows, cols, title))


if __name__ == "__main__":
    main()
