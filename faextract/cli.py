"""The ``faextract`` command line: a thin shell over the library.

Each command parses its options, builds a config, calls one library function and prints a
summary. Heavy imports happen inside the commands so that ``--help`` is instant. User errors
(:class:`~faextract.errors.FaextractError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from faextract import __version__
from faextract.errors import FaextractError, first_line

app = typer.Typer(
    name="faextract",
    help="Learned, physically meaningful features from multivariate climate data cubes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help wraps long formats (NAME=lat0:lat1,lon0:lon1) at any width; the rich layout
    # cut them off at 80 columns and labelled flags "<bool>".
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        typer.echo(f"faextract {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
):
    """faextract: train an FAConvLSTM encoder on climate cubes and extract embeddings."""


def user_errors(fn):
    """Turn FaextractError into a one-line message and exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from faextract.runtime.signals import StopFlag

        try:
            # From the first line on, SIGTERM/SIGUSR1 (a scheduler's warning) request a stop
            # at the next safe point instead of killing the process mid-write.
            with StopFlag():
                return fn(*args, **kwargs)
        except FaextractError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: rerun the same command to continue (finished blocks and "
                "checkpoints are kept)",
                err=True,
            )
            raise typer.Exit(130) from None
        except OSError as err:  # the environment: a full disk, a read-only folder, ...
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or first_line(err)}", err=True)
            raise typer.Exit(1) from None
        except MemoryError:
            typer.echo(
                "error: out of memory (a grid or block too large for this machine: use "
                "spatial tiles, a smaller --batch-size, or a machine with more memory)",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _command_line(subcommand: str) -> str:
    """The command as the user typed it, for the output's ``history`` attribute."""
    import shlex

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0 in ("faextract", "__main__.py") and subcommand in sys.argv[1:]:
        return shlex.join(["faextract", *sys.argv[1:]])
    return f"faextract {subcommand}"  # called as a library or from a test runner


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FaextractError(f"--levels: expected numbers like 500,850, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


Inputs = Annotated[
    list[str], typer.Argument(help="NetCDF files, globs, or a Zarr store (local or a URL).")
]
VarsOpt = Annotated[
    str | None, typer.Option("--variables", "-v", help="Comma-separated variable names.")
]
LevelsOpt = Annotated[str | None, typer.Option("--levels", help="Keep these levels, e.g. 500,850.")]
DimsOpt = Annotated[str | None, typer.Option("--dims", help="Axis names, e.g. time=T,lat=Y,lon=X.")]
SelectOpt = Annotated[
    str | None,
    typer.Option(
        "--select",
        help="One value of each non-grid dimension, e.g. member=3 (ERA5's expver is combined).",
    ),
]
SortOpt = Annotated[
    bool, typer.Option("--sort-time", help="Sort unsorted times instead of failing.")
]


def _open(inputs, variables, levels, dims, sort_time, select):
    from faextract.data.cube import open_cube

    return open_cube(
        inputs,
        _names(variables),
        levels=_floats(levels),
        dims=dims,
        sort_time=sort_time,
        select=select,
    )


@app.command()
@user_errors
def inspect(
    inputs: Inputs,
    variables: VarsOpt = None,
    levels: LevelsOpt = None,
    dims: DimsOpt = None,
    select: SelectOpt = None,
    sort_time: SortOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
):
    """Report variables, axes, calendar, grid and chunking of a cube (metadata + a small sample)."""
    from faextract.data.report import describe

    info = describe(_open(inputs, variables, levels, dims, sort_time, select))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    size = info["size_on_disk_bytes"]
    where = "remote" if size is None else f"{size / 1e6:.1f} MB on disk"
    console.print(f"[bold]{', '.join(info['sources'])}[/bold]  ({where})")
    t = info["time"]
    console.print(
        f"time: {t['start']} .. {t['end']}, {t['steps']} steps of {t['step']}, calendar {t['calendar']}"
    )
    if t["gaps"]:
        gaps = t["gaps"]
        console.print(
            f"[yellow]time gaps: {gaps['count']} (largest {gaps['largest']} after {gaps['after']}): "
            "windows spanning one see steps that are not consecutive[/yellow]"
        )
    g = info["grid"]
    console.print(
        f"grid: {g['nlat']} x {g['nlon']} (lat x lon), resolution {g['dlat']:g} x {g['dlon']:g} deg, "
        f"lat {g['lat_range'][0]:g}..{g['lat_range'][1]:g}, lon {g['lon_range'][0]:g}..{g['lon_range'][1]:g}, "
        f"{'periodic (global)' if g['periodic'] else 'not periodic'}"
    )
    axes = ", ".join(f"{a}={v['name']} ({v['detected_by']})" for a, v in info["axes"].items())
    console.print(f"axes: {axes}")
    if info["levels"]:
        console.print(f"levels: {', '.join(f'{v:g}' for v in info['levels'])}")
    table = Table("variable", "long_name", "units", "dims", "dtype", "NaN (sample)", "chunks")
    for v in info["variables"]:
        table.add_row(
            v["name"],
            v["long_name"],
            v["units"],
            ",".join(v["dims"]),
            v["dtype"] + (" packed" if v["packed"] else ""),
            f"{100 * v['nan_fraction_sample']:.1f}%",
            "x".join(map(str, v["chunks"])) if v["chunks"] else "-",
        )
    console.print(table)


@app.command()
@user_errors
def stats(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .nc or .zarr file.")],
    variables: VarsOpt = None,
    levels: LevelsOpt = None,
    dims: DimsOpt = None,
    select: SelectOpt = None,
    sort_time: SortOpt = False,
    climatology: Annotated[
        str, typer.Option(help="Per-gridpoint climatology: none, monthly or dayofyear.")
    ] = "none",
    area_weighted: Annotated[bool, typer.Option(help="Weight by cos(latitude).")] = True,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask.distributed scheduler to compute on.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Compute normalization statistics (mean, std, optional climatology) out-of-core."""
    from faextract.data.sources import resolve_paths
    from faextract.data.stats import StatsOptions, compute_stats, save_stats
    from faextract.outputs import claim_output, is_stats_file
    from faextract.runtime.progress import Progress

    claim_output(
        out,
        inputs=resolve_paths(inputs),
        overwrite=overwrite,
        ours=is_stats_file,
        what="statistics file",
    )
    cube = _open(inputs, variables, levels, dims, sort_time, select)
    options = StatsOptions(area_weighted=area_weighted, climatology=climatology)
    with _dask_client(scheduler), Progress(unit="tasks") as progress:
        result = compute_stats(cube, options, progress=None if scheduler else progress)
    save_stats(result, out, overwrite=overwrite)
    for ch, m, s in zip(
        result["channel"].values, result["mean"].values, result["std"].values, strict=True
    ):
        typer.echo(f"{ch:>16}  mean {m:12.5g}  std {s:12.5g}")
    typer.echo(f"wrote {out}")


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
        typer.echo(f"validation MSE (normalized units): {parts}")
    typer.echo(f"checkpoints in {out}")


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

    if zarr_format not in (2, 3):
        raise FaextractError(f"--zarr-format must be 2 or 3, got {zarr_format}")
    options = EmbedOptions(
        batch_size=batch_size,
        device=device,
        bf16=bf16,
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
        tiles=tiles,
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


@app.command()
@user_errors
def plot(
    store: Annotated[Path, typer.Argument(help="Embeddings store written by faextract embed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNG files.")] = Path(
        "quicklook"
    ),
    overwrite: Annotated[
        bool, typer.Option(help="Replace the figures of an earlier plot in that directory.")
    ] = False,
):
    """Write quicklook PNGs: embedding principal components and attention maps."""
    from faextract.plot import plot_store

    written = plot_store(store, out, overwrite=overwrite)
    typer.echo(f"wrote {len(written)} figures to {out}")


@app.command()
@user_errors
def export(
    store: Annotated[Path, typer.Argument(help="Embeddings store written by faextract embed.")],
    out: Annotated[Path, typer.Argument(help="NetCDF file to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
):
    """Convert an embeddings store to CF-clean NetCDF4 (for Panoply and CF checkers)."""
    from faextract.outputs import claim_output, is_exported_netcdf
    from faextract.store import to_netcdf

    claim_output(
        out, inputs=[store], overwrite=overwrite, ours=is_exported_netcdf, what="NetCDF export"
    )
    to_netcdf(store, out)
    typer.echo(f"wrote {out}")


slurm_app = typer.Typer(
    help="Render (and optionally submit) SLURM batch jobs for train and embed.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(slurm_app, name="slurm")

PartitionOpt = Annotated[str | None, typer.Option(help="SLURM partition.")]
AccountOpt = Annotated[str | None, typer.Option(help="SLURM account.")]
TimeOpt = Annotated[str, typer.Option(help="Time limit, e.g. 04:00:00.")]
CpusOpt = Annotated[int, typer.Option(help="CPUs per task.")]
LogOpt = Annotated[str, typer.Option(help="Directory for job logs.")]
ExtraOpt = Annotated[
    list[str] | None, typer.Option("--sbatch", help="Extra #SBATCH flag, e.g. --sbatch=--qos=high.")
]
WriteOpt = Annotated[
    Path | None, typer.Option("--write", help="Write the script here instead of printing it.")
]
SubmitOpt = Annotated[bool, typer.Option("--submit", help="Submit with sbatch after writing.")]


def _emit(script: str, write: Path | None, submit: bool, log_dir: str) -> None:
    if write is None and not submit:
        typer.echo(script, nl=False)
        return
    import subprocess
    import tempfile

    Path(log_dir).mkdir(parents=True, exist_ok=True)
    if write is None:
        write = Path(tempfile.mkstemp(prefix="faextract-", suffix=".sbatch")[1])
    write.write_text(script)
    write.chmod(0o755)
    typer.echo(f"wrote {write}")
    if submit:
        try:
            out = subprocess.run(["sbatch", str(write)], capture_output=True, text=True, check=True)
        except FileNotFoundError:
            raise FaextractError("sbatch not found: is SLURM installed and on PATH?") from None
        except subprocess.CalledProcessError as err:
            raise FaextractError(f"sbatch failed: {err.stderr.strip()}") from None
        typer.echo(out.stdout.strip())


def _cluster(partition, account, time, cpus, gpus, log_dir, sbatch):
    from faextract.slurm import ClusterOptions

    return ClusterOptions(
        partition=partition, account=account, time=time, cpus=cpus, gpus=gpus,
        log_dir=log_dir, extra=sbatch or [],
    )  # fmt: skip


@slurm_app.command("embed")
@user_errors
def slurm_embed(
    inputs: Inputs,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Trained checkpoint.")],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output Zarr store (shared by all tasks).")
    ],
    tasks: Annotated[int, typer.Option(help="Array tasks; each takes every N-th time block.")] = 4,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    time: TimeOpt = "04:00:00",
    cpus: CpusOpt = 8,
    gpus: Annotated[int, typer.Option(help="GPUs per task.")] = 0,
    log_dir: LogOpt = "logs",
    sbatch: ExtraOpt = None,
    embed_arg: Annotated[
        list[str] | None,
        typer.Option("--embed-arg", help="Extra argument for faextract embed (repeatable)."),
    ] = None,
    write: WriteOpt = None,
    submit: SubmitOpt = False,
):
    """An embed job array: task I of N runs `faextract embed --shard I/N` into one store."""
    from faextract.slurm import render_embed

    cluster = _cluster(partition, account, time, cpus, gpus, log_dir, sbatch)
    _emit(render_embed(inputs, checkpoint, out, tasks, cluster, embed_arg), write, submit, log_dir)


@slurm_app.command("train")
@user_errors
def slurm_train(
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory.")],
    config: Annotated[str | None, typer.Option("--config", "-c", help="Training config.")] = None,
    nodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    procs_per_node: Annotated[
        int, typer.Option(help="Processes per node (= GPUs per node on GPU nodes).")
    ] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs per node.")] = 0,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    time: TimeOpt = "24:00:00",
    cpus: CpusOpt = 16,
    log_dir: LogOpt = "logs",
    sbatch: ExtraOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override passed to faextract train.")
    ] = None,
    write: WriteOpt = None,
    submit: SubmitOpt = False,
):
    """A DDP training job: nodes x procs-per-node processes via srun + torchrun; requeues on time limit."""
    from faextract.slurm import render_train

    cluster = _cluster(partition, account, time, cpus, gpus, log_dir, sbatch)
    extra = [a for s in set_ or [] for a in ("--set", s)]
    _emit(render_train(out, config, nodes, procs_per_node, cluster, extra), write, submit, log_dir)


class _dask_client:
    """Use an existing dask.distributed scheduler for the duration of a command."""

    def __init__(self, address: str | None):
        self.address, self.client = address, None

    def __enter__(self):
        if self.address:
            try:
                from distributed import Client
            except ImportError:
                raise FaextractError(
                    "--scheduler needs dask.distributed: pip install distributed"
                ) from None
            try:
                self.client = Client(self.address, timeout="20s")
            except Exception as err:  # noqa: BLE001
                raise FaextractError(f"--scheduler {self.address}: cannot connect ({err})") from err
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        return False


def main() -> None:
    import warnings

    # Library chatter that is not the user's business: zarr says on every v3 store that
    # consolidated metadata is outside its spec (faextract writes it for faster opening).
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    warnings.filterwarnings("ignore", message=".*consolidated metadata.*", module="zarr")
    shown = warnings.showwarning

    def one_line(message, category, *args, **kwargs):
        from faextract.errors import FaextractWarning

        if issubclass(category, FaextractWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    try:
        code = app(prog_name="faextract", standalone_mode=False)
    except Exception as err:  # noqa: BLE001 - click's exceptions (typer vendors its own click)
        kinds = {c.__name__ for c in type(err).__mro__}
        ctx = getattr(err, "ctx", None)
        if "NoArgsIsHelpError" in kinds:  # bare `faextract`: the help, as asked
            print(ctx.get_help() if ctx is not None else "", file=sys.stderr)
            code = 2
        elif "UsageError" in kinds:  # a missing or malformed option: one line, as every error
            where = ctx.command_path if ctx is not None else "faextract"
            print(f"error: {err.format_message()} (see '{where} --help')", file=sys.stderr)
            code = 2
        elif "Abort" in kinds:
            print("interrupted", file=sys.stderr)
            code = 130
        else:
            raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
