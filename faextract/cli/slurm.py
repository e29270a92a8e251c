"""``faextract slurm embed|compress|train``: batch scripts for SLURM clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faextract.cli.common import (
    Inputs,
    app,
    user_errors,
)
from faextract.errors import FaextractError

slurm_app = typer.Typer(
    help="Render (and optionally submit) SLURM batch jobs for train, embed and compress.",
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


@slurm_app.command("compress")
@user_errors
def slurm_compress(
    inputs: Inputs,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Compressed Zarr store (shared by all tasks).")
    ],
    tasks: Annotated[int, typer.Option(help="Array tasks; each takes every N-th block.")] = 4,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    time: TimeOpt = "04:00:00",
    cpus: CpusOpt = 4,
    gpus: Annotated[int, typer.Option(help="GPUs per task.")] = 0,
    log_dir: LogOpt = "logs",
    sbatch: ExtraOpt = None,
    compress_arg: Annotated[
        list[str] | None,
        typer.Option("--compress-arg", help="Argument for faextract compress, e.g. the bound "
                     "(repeatable: --compress-arg=--rel-error --compress-arg=1e-3)."),
    ] = None,
    write: WriteOpt = None,
    submit: SubmitOpt = False,
):
    """A compress job array: task I of N runs `faextract compress --shard I/N` into one store."""
    from faextract.slurm import render_compress

    cluster = _cluster(partition, account, time, cpus, gpus, log_dir, sbatch)
    _emit(render_compress(inputs, out, tasks, cluster, compress_arg), write, submit, log_dir)


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
