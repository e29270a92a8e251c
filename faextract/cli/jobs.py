"""``faextract train``, ``embed`` and ``evaluate``: the jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from faextract.cli.common import (
    _command_line,
    app,
    user_errors,
)
from faextract.errors import FaextractError


@app.command()
@user_errors
def train(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Run directory (checkpoints, metrics.csv, config.yaml)."),
    ],
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="YAML config file, or a bundled name: sample, default, ..."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN_DIR/last.pt.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start over in a non-empty run directory.")
    ] = False,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, cuda:N (overrides train.device).")
    ] = None,
    deterministic: Annotated[
        bool, typer.Option(help="Deterministic kernels (overrides train.deterministic).")
    ] = False,
):
    """Train an encoder (self-supervised) on a dataset described by a config."""
    # Large CPU tensors on 2 MB transparent huge pages; PyTorch's allocator reads this when torch
    # is imported, which happens below. glibc hands allocations over 32 MB back to the kernel on
    # free, and refaulting them 4 KB at a time cost up to half of an elementwise pass of a
    # training step on a 2-core machine. Not for embed: there it raised resident memory over a
    # long run (+23% for 10x the data, against +13%). THP_MEM_ALLOC_ENABLE=0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from faextract.config import load_config
    from faextract.train import train as run_train

    overrides = list(set_ or [])
    if device:
        overrides.append(f"train.device={device}")
    if deterministic:
        overrides.append("train.deterministic=true")
    cfg = load_config(config, overrides)
    result = run_train(cfg, out, resume=resume, overwrite=overwrite)
    if result.status == "preempted":
        from faextract.runtime.signals import EXIT_STOPPED

        typer.echo(
            f"stopped by signal at step {result.step}: checkpoint saved, resume with --resume"
        )
        raise typer.Exit(EXIT_STOPPED)
    typer.echo(
        f"{result.status} after {result.epoch} epochs, {result.step} steps; best validation loss {result.best_val:.4g}"
    )
    if result.val_metrics:
        parts = ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items())
        what = ("bits per value and MSE in units of each block's range" if cfg.job == "compressor"
                else "MSE in normalized units")  # fmt: skip
        typer.echo(f"validation ({what}): {parts}")
    typer.echo(f"checkpoints in {out}")


# Long only by its typer option declarations; the body parses, calls embed() and reports.
@app.command()
@user_errors
def embed(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="NetCDF files, globs, or a Zarr store, local or a URL (default: the bundled sample cube)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output Zarr store.")] = Path(
        "embeddings.zarr"
    ),
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint", help="Trained checkpoint (default: the bundled sample model)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (CUDA).")] = False,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the encoder's cells (GPU runs).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes reading ahead (0: a thread; on GPU nodes try 2-4).", min=0
        ),
    ] = 0,
    latent: Annotated[
        bool, typer.Option("--latent", help="Also write latent feature maps.")
    ] = False,
    attention_query: Annotated[
        list[str] | None,
        typer.Option(
            "--attention-query",
            metavar="NAME=LAT0:LAT1,LON0:LON1",
            help="NAME=lat0:lat1,lon0:lon1: also map where this region attends (repeatable).",
        ),
    ] = None,
    zarr_format: Annotated[int, typer.Option(help="Zarr format of the output: 3 or 2.")] = 3,
    shard: Annotated[
        str, typer.Option(help="I/N: process every N-th time block starting at I.")
    ] = "0/1",
    warmup: Annotated[
        int | None,
        typer.Option(help="Warm-up steps per window (default: half the training window)."),
    ] = None,
    keep: Annotated[
        int | None, typer.Option(help="Kept steps per window (default: the training window).")
    ] = None,
    dims: Annotated[
        str | None,
        typer.Option(
            "--dims", help="Axis names, e.g. time=T,lat=Y,lon=X (default: those used in training)."
        ),
    ] = None,
    select: Annotated[
        str | None,
        typer.Option(
            "--select",
            help="One value of each non-grid dimension, e.g. member=3 (default: as in training).",
        ),
    ] = None,
    sort_time: Annotated[
        bool | None,
        typer.Option(
            "--sort-time/--no-sort-time",
            help="Sort unsorted times instead of failing (default: as in training).",
        ),
    ] = None,
    perturb: Annotated[
        str | None,
        typer.Option(
            help="Perturb the input for robustness checks: noise=0.05 (Gaussian, in each "
            "variable's std), drop=0.1 (cells masked), seed=N."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
):
    """Stream a dataset through a trained encoder into a CF-described Zarr store (restartable)."""
    from faextract.data.perturb import Perturbation
    from faextract.embed import EmbedOptions, parse_query, parse_shard
    from faextract.embed import embed as run_embed
    from faextract.paths import SAMPLE_CHECKPOINT, SAMPLE_CUBE
    from faextract.runtime.progress import Progress

    options = EmbedOptions(
        batch_size=batch_size,
        device=device,
        bf16=bf16,
        compile=compile_,
        workers=workers,
        latent=latent,
        queries=dict(parse_query(q) for q in attention_query or []),
        zarr_format=zarr_format,
        shard=parse_shard(shard),
        overwrite=overwrite,
        warmup=warmup,
        keep=keep,
        dims=dims,
        select=select,
        sort_time=sort_time,
        perturb=Perturbation.parse(perturb),
    )
    command = _command_line("embed")
    try:
        with Progress(unit="windows") as progress:
            result = run_embed(
                inputs or [str(SAMPLE_CUBE)],
                checkpoint or str(SAMPLE_CHECKPOINT),
                str(out),
                options,
                command=command,
                progress=progress,
            )
    except FaextractError as err:
        if checkpoint is None and inputs and "checkpoint" in str(err):
            raise FaextractError(
                f"{err} (no --checkpoint was given, so the bundled sample model was used: "
                "give the checkpoint trained on this data)"
            ) from None
        raise
    typer.echo(
        f"{result.status}: wrote {result.blocks_written} of {result.blocks_total} time blocks "
        f"({result.windows} windows) to {result.path} in {result.seconds:.1f}s; store size {result.bytes / 1e6:.1f} MB"
    )
    if result.reading_bound() and workers == 0:
        typer.echo(
            f"note: the model waited for input {100 * result.input_wait / result.seconds:.0f}% "
            "of the time; --workers 2-4 reads ahead in parallel processes"
        )
    if result.status == "partial":
        typer.echo(
            "other shards still have blocks to write; the store is marked complete when all are done"
        )
    if result.status == "stopped":
        from faextract.runtime.signals import EXIT_STOPPED

        typer.echo("stopped by signal: rerun the same command to finish")
        raise typer.Exit(EXIT_STOPPED)


@app.command()
@user_errors
def evaluate(
    stores: Annotated[list[str], typer.Argument(help="Embeddings stores to compare (columns).")],
    input_: Annotated[
        list[str],
        typer.Option(
            "--input", "-i", help="The cube the stores embed: files, globs or a Zarr store (repeatable)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json, report.md, PNGs.")],
    index: Annotated[
        list[str] | None,
        typer.Option(
            "--index",
            metavar="NAME=VAR:LAT0:LAT1,LON0:LON1",
            help="NAME=VAR:lat0:lat1,lon0:lon1: a box-mean anomaly index to probe (repeatable).",
        ),
    ] = None,
    leads: Annotated[
        str, typer.Option(help="Steps ahead to probe targets at, e.g. 0,1,3.")
    ] = "0,1,3",
    perturbed: Annotated[
        list[str] | None,
        typer.Option(
            "--perturbed",
            help="Store of a perturbed input (embed --perturb), paired by checkpoint (repeatable).",
        ),
    ] = None,
    eof_targets: Annotated[
        int, typer.Option(help="Leading EOF PCs of each variable probed as targets.", min=0)
    ] = 5,
    folds: Annotated[int, typer.Option(help="Contiguous held-out time blocks.", min=2)] = 5,
    repeats: Annotated[
        int,
        typer.Option(
            help="Run the cross-validation this many times with the blocks shifted by a "
            "fraction of a block, and average the R² (steadier scores on short records).",
            min=1,
        ),
    ] = 1,
    field_cells: Annotated[
        int,
        typer.Option(
            help="At most this many cells per variable (block means) in the anomaly field the "
            "EOF and random baselines and the EOF targets are computed on.",
            min=1,
        ),
    ] = 4096,
    tiles: Annotated[
        str, typer.Option(help="Tiled embeddings as features: concat or mean over tiles.")
    ] = "concat",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier report in --out.")] = False,
):
    """Measure whether embeddings carry the physics: probes against EOF baselines, and more."""
    from faextract.evaluate import EvaluateOptions, IndexSpec
    from faextract.evaluate import evaluate as run_evaluate
    from faextract.runtime.progress import Progress

    try:
        lead_list = tuple(int(v) for v in leads.split(",") if v.strip())
    except ValueError:
        raise FaextractError(f"--leads: expected whole numbers like 0,1,3, got {leads!r}") from None
    options = EvaluateOptions(
        indices=[IndexSpec.parse(t) for t in index or []],
        leads=lead_list,
        eof_targets=eof_targets,
        folds=folds,
        repeats=repeats,
        tiles=tiles,
        max_cells=field_cells,
        overwrite=overwrite,
    )
    with Progress(unit="steps") as progress:
        report = run_evaluate(
            stores, input_, out, options, perturbed=perturbed or [], progress=progress
        )
    for s in report.stores:
        index_r2 = ", ".join(
            f"{t} {s.probe[t][report.leads[0]]:.3f}"
            for t, d in report.targets.items()
            if d["kind"] == "index"
        )
        typer.echo(
            f"{s.path}: effective rank {s.effective_rank:.1f} of {s.features}"
            + (f"; R² at lead {report.leads[0]}: {index_r2}" if index_r2 else "")
        )
    typer.echo(f"wrote {out / 'report.md'}")
