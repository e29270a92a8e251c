"""Render the SLURM batch templates in ``slurm/`` with a user's cluster settings.

The templates are plain ``string.Template`` files so that they stay readable as shell scripts;
:func:`render` fills them, adding ``#SBATCH`` lines only for the options that were given
(partition, account, GPUs, extra flags).
"""

from __future__ import annotations

import shlex
import string
import sys
from dataclasses import dataclass, field

from faextract.errors import FaextractError
from faextract.paths import shared_folder

TEMPLATE_DIR = shared_folder("slurm", "embed.sbatch")


@dataclass
class ClusterOptions:
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    cpus: int = 8
    gpus: int = 0  # per node (train) or per task (embed)
    signal_seconds: int = 300  # warning before the time limit: long enough to save state
    log_dir: str = "logs"
    extra: list[str] = field(default_factory=list)  # more #SBATCH flags, e.g. "--qos=high"
    python: str = sys.executable


def _check_scheduler_options(c: ClusterOptions, job_name: str) -> None:
    """Refuse control characters in values that land on ``#SBATCH`` lines: a newline there
    would end the comment and make the rest a shell command of the job."""
    values = [
        ("--partition", c.partition), ("--account", c.account), ("--time", c.time),
        ("--log-dir", c.log_dir), ("job name", job_name), *(("--sbatch", e) for e in c.extra),
    ]  # fmt: skip
    for option, value in values:
        if value is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in str(value)):
            raise FaextractError(f"{option}: control characters are not allowed, got {value!r}")
    for option, value in (("--log-dir", c.log_dir), ("job name", job_name)):
        if any(ch.isspace() for ch in value):
            raise FaextractError(f"{option}: spaces are not allowed on #SBATCH lines, got {value!r}")


def _sbatch_lines(c: ClusterOptions, gpu_flag: str) -> str:
    """Optional #SBATCH lines; ``gpu_flag`` is a format like ``--gres=gpu:{n}``."""
    lines = []
    if c.partition:
        lines.append(f"#SBATCH --partition={c.partition}")
    if c.account:
        lines.append(f"#SBATCH --account={c.account}")
    if c.gpus:
        lines.append("#SBATCH " + gpu_flag.format(n=c.gpus))
    lines += [f"#SBATCH {flag}" for flag in c.extra]
    return "\n".join(lines)


def _template(name: str) -> string.Template:
    path = TEMPLATE_DIR / f"{name}.sbatch"
    if not path.exists():
        raise FaextractError(
            f"{path}: SLURM template not found (faextract slurm needs a source checkout)"
        )
    return string.Template(path.read_text())


def _check_time(value: str) -> None:
    parts = value.replace("-", ":").split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 4:
        raise FaextractError(
            f"--time: expected a SLURM time like 04:00:00 or 1-00:00:00, got {value!r}"
        )


def _array_job(template: str, job_name: str, inputs: list[str], out: str, tasks: int,
               cluster: ClusterOptions, **fields) -> str:  # fmt: skip
    """A job-array script whose ``tasks`` tasks share one output (``--shard`` I of N)."""
    if tasks < 1:
        raise FaextractError(f"--tasks must be >= 1, got {tasks}")
    _check_time(cluster.time)
    _check_scheduler_options(cluster, job_name)
    return _template(template).substitute(
        job_name=job_name,
        last_task=tasks - 1,
        time=cluster.time,
        cpus=cluster.cpus,
        log_dir=cluster.log_dir,
        signal_seconds=cluster.signal_seconds,
        sbatch_extra=_sbatch_lines(cluster, "--gres=gpu:{n}"),
        python=shlex.quote(cluster.python),
        inputs=" ".join(shlex.quote(i) for i in inputs),
        out=shlex.quote(out),
        **fields,
    )


def _words(args: list[str] | None) -> str:
    return " ".join(shlex.quote(a) for a in args or [])


def render_embed(
    inputs: list[str],
    checkpoint: str,
    out: str,
    tasks: int,
    cluster: ClusterOptions,
    embed_args: list[str] | None = None,
    job_name: str = "faextract-embed",
) -> str:
    """The job-array script: ``tasks`` array tasks sharing one output store."""
    return _array_job(
        "embed", job_name, inputs, out, tasks, cluster,
        checkpoint=shlex.quote(checkpoint),
        # Quoted once as a whole word: $(...) or a space in --out stays part of the file name.
        stop_prefix=shlex.quote(f"{out}.stop-"),
        embed_args=_words(embed_args),
    )  # fmt: skip


def render_compress(
    inputs: list[str],
    out: str,
    tasks: int,
    cluster: ClusterOptions,
    compress_args: list[str] | None = None,
    job_name: str = "faextract-compress",
) -> str:
    """The job-array script: ``tasks`` array tasks sharing one compressed store (``--shard``);
    a task near its time limit is stopped and requeued, and resumes from the block ledger."""
    return _array_job("compress", job_name, inputs, out, tasks, cluster,
                      compress_args=_words(compress_args))  # fmt: skip


def render_train(
    run_dir: str,
    config: str | None,
    nodes: int,
    procs_per_node: int,
    cluster: ClusterOptions,
    train_args: list[str] | None = None,
    job_name: str = "faextract-train",
) -> str:
    """The DDP training script: ``nodes`` x ``procs_per_node`` processes through srun + torchrun."""
    if nodes < 1 or procs_per_node < 1:
        raise FaextractError("--nodes and --procs-per-node must be >= 1")
    _check_time(cluster.time)
    _check_scheduler_options(cluster, job_name)
    return _template("train").substitute(
        job_name=job_name,
        nodes=nodes,
        procs_per_node=procs_per_node,
        time=cluster.time,
        cpus=cluster.cpus,
        log_dir=cluster.log_dir,
        signal_seconds=cluster.signal_seconds,
        sbatch_extra=_sbatch_lines(cluster, "--gpus-per-node={n}"),
        python=shlex.quote(cluster.python),
        run_dir=shlex.quote(run_dir),
        stop_prefix=shlex.quote(f"{run_dir}/STOP-"),
        last_checkpoint=shlex.quote(f"{run_dir}/last.pt"),
        config_arg=f"--config {shlex.quote(config)}" if config else "",
        train_args=_words(train_args),
    )
