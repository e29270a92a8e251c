"""Self-supervised training of the encoder, restartable, from a laptop to many GPUs.

:func:`train` runs the whole job: open the cube, hold out the last ``val_fraction`` of the
time axis, compute (or load) normalization statistics on the training range, stream windows,
optimize reconstruction / next-step forecast (+ embedding and optional DEC terms) with AdamW,
warmup + cosine learning rate, gradient clipping, validation every epoch against climatology
and persistence baselines, and checkpoints (``last.pt`` every epoch or ``checkpoint_every``
steps, ``best.pt`` on improved validation loss), written atomically by rank 0 only.

``resume=True`` continues from ``last.pt`` with the same optimizer, scheduler, RNG and data
position (the batch order is a function of seed and epoch, so skipping the batches already
done reproduces the original run). SIGUSR1/SIGTERM (SLURM's warning before a time limit) make
the job checkpoint at the next step and stop with status ``"preempted"``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faextract import distributed
from faextract.checkpoint import load_checkpoint, save_checkpoint, stats_from_dict, stats_to_dict
from faextract.config import Config, save_config
from faextract.data.cube import resolve_paths
from faextract.data.dataset import CubeSource, WindowDataset, make_loader
from faextract.data.selection import parse_select
from faextract.data.stats import StatsOptions, compute_stats, load_stats, resolve_climatology
from faextract.data.tiling import TileSpec
from faextract.errors import ConfigError, DataError, FaextractError
from faextract.locks import Lock
from faextract.losses import dec_kl, decorrelation, masked_mse, weighted_sse
from faextract.models.autoencoder import ClimateAutoencoder, coarse_target
from faextract.outputs import RUN_FILES, check_not_input, is_run_dir
from faextract.progress import Progress
from faextract.signals import StopFlag

METRIC_FIELDS = [
    "kind", "epoch", "step", "lr", "loss", "recon", "forecast", "embedding", "decorrelation", "cluster",
    "windows_per_s", "climatology", "persistence", "time",
]  # fmt: skip


@dataclass
class TrainResult:
    status: str  # "finished", "early_stopped" or "preempted"
    epoch: int
    step: int
    best_val: float
    val_metrics: dict = field(default_factory=dict)
    run_dir: str = ""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for ``train.device`` (auto, cpu, cuda, cuda:N) in the process of ``local_rank``.

    ``auto`` and ``cuda`` take the GPU of the same index as the local rank (torchrun with one
    process per GPU); where each process sees a single GPU (SLURM's ``--gpus-per-task=1``)
    every rank takes that one.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available")
    count = torch.cuda.device_count()
    device = torch.device(name)
    if device.index is None:
        if local_rank >= count > 1:
            raise ConfigError(
                f"process of local rank {local_rank} has no GPU of its own: this node shows"
                f" {count} CUDA devices; start at most {count} processes per node or set"
                " train.device=cpu"
            )
        device = torch.device("cuda", local_rank if local_rank < count else 0)
    elif device.index >= count:
        raise ConfigError(f"train.device={name} but this node shows {count} CUDA device(s)")
    return device


def seasonal_period(cube) -> float:
    """Steps per year from the median time step (365 for daily noleap, 12 for monthly, ...)."""
    from faextract.data.time import days_in_year

    t = cube.time.values
    if len(t) < 2:
        return 365.0
    import pandas as pd

    step_days = (
        float(
            np.median(
                [pd.Timedelta(t[i + 1] - t[i]).total_seconds() for i in range(min(50, len(t) - 1))]
            )
        )
        / 86400
    )
    year = days_in_year(2001, cube.calendar)
    return year / step_days if step_days > 0 else 365.0


def split_time(
    n: int, val_fraction: float, window: int
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Training and validation ranges: the last ``val_fraction`` of the steps is held out."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, window)
    if n - n_val < window:
        raise DataError(
            f"the cube has {n} time steps: too few for a training window of {window} "
            f"plus {n_val} validation steps (lower tiles.window or data.val_fraction)"
        )
    return (0, n - n_val), ((n - n_val, n) if n_val else None)


def model_args(config: Config, cube) -> dict:
    m = config.model
    return dict(
        in_channels=len(cube.channels),
        cell=m.cell,
        filters=m.filters,
        layers=m.layers,
        kernel_size=m.kernel_size,
        stem_channels=m.stem_channels,
        downsample=m.downsample,
        embedding_dim=m.embedding_dim,
        cell_options=dict(m.cell_options),
        objective=m.objective,
        clusters=m.clusters,
        periodic=bool(cube.periodic),
        seasonal_period=float(seasonal_period(cube)),
        embedding_grid=tuple(
            min(g, n) for g, n in zip(m.embedding_grid, cube.shape[2:], strict=True)
        ),
        embedding_horizon=m.embedding_horizon,
        embedding_norm=m.embedding_norm,
        head_grid=_head_grid(m.head_grid, cube.shape[2:], 2**m.downsample),
    )


def _head_grid(grid, shape, multiple: int) -> tuple[int, int] | None:
    """The head's pooling grid, at most the latent grid (null: global pooling)."""
    if not grid:
        return None
    return tuple(max(1, min(g, -(-n // multiple))) for g, n in zip(grid, shape, strict=True))


def tile_spec(config: Config, multiple: int) -> TileSpec:
    t = config.tiles
    return TileSpec(
        window=t.window,
        stride=t.stride,
        tile=tuple(t.tile) if t.tile else None,
        halo=t.halo,
        multiple=multiple,
        edge=t.edge,
    )


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _rng_state() -> dict:
    # Only torch draws random numbers during training (dropout, k-means seeding uses its own
    # generator, the data order is a pure function of seed and epoch).
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _check_resume_compatible(ckpt: dict, args: dict, channels, select: dict) -> None:
    old = ckpt["model"]["args"]
    for key in sorted(set(old) | set(args)):
        if old.get(key) != args.get(key):
            raise FaextractError(
                f"--resume: checkpoint is incompatible with the config: model {key} is "
                f"{old.get(key)!r} in the checkpoint, {args.get(key)!r} now"
            )
    if list(ckpt["channels"]) != list(channels):
        raise FaextractError(
            f"--resume: checkpoint channels {list(ckpt['channels'])} differ from the data's {list(channels)}"
        )
    before = parse_select(((ckpt.get("config") or {}).get("data") or {}).get("select"))
    if before != select:
        raise FaextractError(
            f"--resume: the checkpoint was trained with data.select {before or 'unset'}, "
            f"the config now has {select or 'unset'}"
        )


def compute_losses(model, batch, config: Config, cluster_on: bool):
    """Forward one batch; returns (total loss, dict of parts) on the batch's device."""
    x, mask, lat, phase = batch["x"], batch["mask"], batch["lat"], batch["phase"]
    step_valid = batch["time"] >= 0
    out = model(x, mask, phase, step_valid)
    parts = {}
    total = x.new_zeros(())
    if out.recon is not None:
        parts["recon"] = masked_mse(out.recon, x, mask, lat)
        total = total + parts["recon"]
    if out.forecast is not None and x.shape[1] > 1:
        parts["forecast"] = masked_mse(out.forecast[:, :-1], x[:, 1:], mask[:, 1:], lat)
        total = total + parts["forecast"]
    # The embedding decoder: pooled fields at t .. t+K from z_t. The present state and the
    # future count half each: with the horizons averaged alike, z kept what is predictable and
    # dropped the rest of the present (leading EOFs of the fields' noise), which users compare.
    target, valid = coarse_target(x, mask, tuple(out.coarse.shape[-2:]))
    no_area = torch.zeros(lat.shape[0], target.shape[-2], device=lat.device)  # pooled already
    T = x.shape[1]
    horizons = [
        masked_mse(out.coarse[:, : T - k, k], target[:, k:], valid[:, k:], no_area)
        for k in range(min(out.coarse.shape[2], T))
    ]
    now, ahead = horizons[0], horizons[1:]
    parts["embedding"] = 0.5 * (now + torch.stack(ahead).mean()) if ahead else now
    total = total + config.model.embedding_loss_weight * parts["embedding"]
    if config.model.decorrelation_weight > 0:
        parts["decorrelation"] = decorrelation(out.embeddings, batch["time"] >= 0)
        total = total + config.model.decorrelation_weight * parts["decorrelation"]
    if cluster_on and out.q is not None:
        parts["cluster"] = dec_kl(out.q, step_valid)
        total = total + config.model.cluster_weight * parts["cluster"]
    return total, parts


@torch.no_grad()
def evaluate(model, loader, device, info, amp) -> dict:
    """Validation MSEs of the model and of the climatology and persistence baselines.

    All are computed on steps t >= 1 where both x_t and x_{t-1} are valid, so every number
    compares the same cells. Climatology predicts 0 in normalized units (the climatological
    mean, when the statistics include a climatology; otherwise the channel mean).
    """
    model.eval()
    sums = {k: None for k in ("recon", "forecast", "climatology", "persistence", "weight")}

    def add(key, value):
        sums[key] = value if sums[key] is None else sums[key] + value

    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        x, mask, lat = batch["x"], batch["mask"], batch["lat"]
        with amp:
            out = model(x, mask, batch["phase"], batch["time"] >= 0)
        m = mask[:, 1:] & mask[:, :-1]
        tgt = x[:, 1:]
        if out.recon is not None:
            add("recon", weighted_sse(out.recon[:, 1:].float(), tgt, m, lat)[0])
        if out.forecast is not None:
            add("forecast", weighted_sse(out.forecast[:, :-1].float(), tgt, m, lat)[0])
        add("climatology", weighted_sse(torch.zeros_like(tgt), tgt, m, lat)[0])
        sse, w = weighted_sse(x[:, :-1], tgt, m, lat)
        add("persistence", sse)
        add("weight", w)
    model.train()
    if sums["weight"] is None:
        return {}
    keys = [k for k, v in sums.items() if v is not None]
    packed = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys]), info)
    res = dict(zip(keys, packed, strict=True))
    w = res.pop("weight").clamp(min=1e-12)
    return {k: float((v / w).mean()) for k, v in res.items()}


LOCK_FILE = ".faextract-lock"


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a directory of other files; a run's directory needs ``resume`` or
    ``overwrite``, which removes only the files a run writes (:data:`RUN_FILES`)."""
    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise FaextractError(f"--resume: no checkpoint {last} to resume from")
        return
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if names:
        if not is_run_dir(run_dir):
            raise FaextractError(
                f"{run_dir}: holds files that are not a faextract run ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}); choose a new or empty run directory"
            )
        if not overwrite:
            raise FaextractError(
                f"{run_dir}: run directory is not empty (use --resume or --overwrite)"
            )
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)


def train(
    config: Config, run_dir, *, resume: bool = False, overwrite: bool = False, plain_progress=None
) -> TrainResult:
    """Train per ``config`` into ``run_dir``; see the module docstring."""
    device = pick_device(config.train.device, distributed.launch_info().local_rank)
    info = distributed.setup(device)
    run_dir = Path(run_dir)
    stack = contextlib.ExitStack()
    try:
        progress = stack.enter_context(Progress(plain=plain_progress, unit="batches"))

        def say(text: str) -> None:
            if info.is_main:
                progress.note(text)

        if info.is_main:
            inputs = resolve_paths(list(config.data.paths))
            inputs += [config.data.stats] if config.data.stats else []
            check_not_input(run_dir, inputs)
            if run_dir.exists() and not run_dir.is_dir():
                raise FaextractError(f"{run_dir}: is a file; --out names a run directory")
            run_dir.mkdir(parents=True, exist_ok=True)
            # One run per directory: a second would write every metrics row twice.
            stack.enter_context(Lock(run_dir / LOCK_FILE, f"the run directory {run_dir}"))
            _prepare_run_dir(run_dir, resume, overwrite)
        tc = config.train
        _seed_everything(tc.seed, tc.deterministic)
        if tc.batch_size % info.world_size:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} (global) must be divisible by the {info.world_size} processes"
            )
        per_rank_batch = tc.batch_size // info.world_size

        d = config.data
        base = CubeSource(
            paths=tuple(d.paths),
            variables=tuple(d.variables) if d.variables else None,
            levels=tuple(d.levels) if d.levels else None,
            dims=dict(d.dims or {}),
            sort_time=d.sort_time,
            select=parse_select(d.select),
        )
        cube = base.open()
        say(f"opened {cube.source_label}: {cube.shape[0]} steps, {len(cube.channels)} channels, "
            f"{cube.shape[2]}x{cube.shape[3]} grid")  # fmt: skip
        try:
            train_range, val_range = split_time(cube.shape[0], d.val_fraction, config.tiles.window)
        except DataError as err:
            raise DataError(f"{cube.source_label}: {err}") from None
        args = model_args(config, cube)

        ckpt = load_checkpoint(run_dir / "last.pt") if resume else None
        if ckpt is not None:
            _check_resume_compatible(ckpt, args, cube.channels, base.select)
            stats = stats_from_dict(ckpt["stats"])
        elif d.stats:
            stats = load_stats(d.stats)
        else:
            stats = None
            if info.is_main:
                train_cube = cube.isel_time(slice(*train_range))
                kind, why = resolve_climatology(d.climatology, train_cube)
                say(f"statistics over the training steps {train_range[0]}..{train_range[1] - 1}; "
                    f"climatology {kind}" + (f" ({why})" if why else ""))  # fmt: skip
                opts = StatsOptions(area_weighted=d.area_weighted, climatology=kind)
                stats = compute_stats(train_cube, opts)
            stats = distributed.broadcast_object(stats, info)

        model = ClimateAutoencoder(**args).to(device)
        spec = tile_spec(config, model.multiple)
        train_src = CubeSource(**{**base.__dict__, "time_range": train_range})
        train_ds = WindowDataset(
            train_src, stats, spec, shuffle=True, seed=tc.seed, rank=info.rank,
            world_size=info.world_size, drop_uneven=True, batch_size=per_rank_batch,
            cube=cube.isel_time(slice(*train_range)),
        )  # fmt: skip
        if train_ds.num_batches() == 0:
            raise DataError(
                "no training window: the training range is shorter than one window per process"
            )
        val_loader = None
        if val_range is not None:
            val_src = CubeSource(**{**base.__dict__, "time_range": val_range})
            val_ds = WindowDataset(
                val_src, stats, spec, rank=info.rank, world_size=info.world_size,
                batch_size=per_rank_batch, cube=cube.isel_time(slice(*val_range)),
            )  # fmt: skip
            val_loader = make_loader(
                val_ds, per_rank_batch, num_workers=tc.num_workers, pin_memory=device.type == "cuda"
            )

        steps_per_epoch = train_ds.num_batches()
        epochs = tc.epochs
        if tc.steps:  # a budget in optimizer steps: as many epochs as it takes, whatever the data
            epochs = max(1, math.ceil(tc.steps / steps_per_epoch))
        total_steps = steps_per_epoch * epochs
        warmup = tc.warmup_steps
        if warmup > total_steps:
            warmup = max(1, total_steps // 10)
            say(f"train.warmup_steps={tc.warmup_steps} is longer than the {total_steps} steps "
                f"of this run; warming up over {warmup} steps instead")  # fmt: skip
        say(f"{train_ds.__len__()} training windows, {steps_per_epoch} steps per epoch, "
            f"{epochs} epochs" + (f" (train.steps={tc.steps})" if tc.steps else "")
            + f"; {sum(p.numel() for p in model.parameters()):,} parameters")  # fmt: skip
        optim = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, _lr_lambda(warmup, total_steps))
        epoch, step, batch_in_epoch, best_val, bad_epochs = 0, 0, 0, float("inf"), 0
        running, in_row, resumed_row = {}, 0, None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"]["state_dict"])
            optim.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            epoch, step = ckpt["epoch"], ckpt["step"]
            batch_in_epoch = ckpt["batch_in_epoch"]
            best_val, bad_epochs = ckpt["best_val"], ckpt.get("bad_epochs", 0)
            if batch_in_epoch:
                resumed_row = ckpt.get("running")
            if model.cluster is not None:
                model.cluster.initialized = bool(ckpt.get("cluster_initialized", False))
        if tc.compile:
            for cell in model.cells:
                cell.compile()
        net = model
        if info.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(config.model.clusters),
            )
        amp = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and tc.bf16
        )

        def payload(status_epoch, status_step, in_epoch):
            return {
                "model": {"args": args, "state_dict": model.state_dict()},
                "config": config.to_dict(),
                "stats": stats_to_dict(stats),
                "channels": list(cube.channels),
                "variables": list(cube.variables),
                "levels": [float(v) for v in cube.dataset["level"].values]
                if "level" in cube.dataset.dims
                else None,
                "grid": cube.grid(),
                "time_units": str(cube.time.encoding.get("units", "")),
                "train_range": [
                    str(cube.time.values[train_range[0]]),
                    str(cube.time.values[train_range[1] - 1]),
                ],
                "tiles": {
                    "window": spec.window,
                    "stride": spec.stride,
                    "tile": list(spec.tile) if spec.tile else None,
                    "halo": spec.halo,
                    "multiple": spec.multiple,
                    "edge": spec.edge,
                },  # fmt: skip
                "epoch": status_epoch,
                "step": status_step,
                "batch_in_epoch": in_epoch,
                "best_val": best_val,
                "bad_epochs": bad_epochs,
                "cluster_initialized": bool(
                    model.cluster is not None and model.cluster.initialized
                ),
                "optimizer": optim.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "val_metrics": last_val,
                # the metrics row in progress, so a mid-epoch resume logs the same means
                "running": {"sums": dict(running), "steps": in_row},
            }

        metrics_path = run_dir / "metrics.csv"
        writer = _MetricsWriter(metrics_path, info.is_main)
        if ckpt is not None:  # rows logged after the checkpoint (a kill -9) are logged again
            writer.drop_after(step)
        tb = _tensorboard(run_dir) if info.is_main else None
        if info.is_main:
            save_config(config, run_dir / "config.yaml")
        last_val: dict = {}
        status = "finished"
        with StopFlag() as stop:
            while epoch < epochs:
                train_ds.set_epoch(epoch)
                train_ds.skip_batches = batch_in_epoch
                loader = make_loader(
                    train_ds,
                    per_rank_batch,
                    num_workers=tc.num_workers,
                    pin_memory=device.type == "cuda",
                )
                cluster_on = model.cluster is not None and epoch >= config.model.cluster_start_epoch
                if cluster_on and not model.cluster.initialized:
                    _init_clusters(model, loader, device, amp, tc.seed, info)
                task = (
                    progress.start(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch)
                    if info.is_main
                    else None
                )
                if task is not None and batch_in_epoch:
                    progress.advance(task, batch_in_epoch)
                t0, seen = time.perf_counter(), 0
                if resumed_row is not None:  # the row a mid-epoch checkpoint had begun
                    running, in_row = dict(resumed_row["sums"]), int(resumed_row["steps"])
                    resumed_row = None
                else:
                    running, in_row = {}, 0
                for batch in loader:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with amp:
                        loss, parts = compute_losses(net, batch, config, cluster_on)
                    if _any_rank(not bool(torch.isfinite(loss.detach())), info, device):
                        raise FaextractError(
                            f"training diverged at step {step + 1}: the loss is not finite "
                            f"(train.lr={tc.lr:g}, train.grad_clip={tc.grad_clip:g}); lower the "
                            f"learning rate or clip gradients; {run_dir / 'last.pt'} holds the "
                            "last good checkpoint, if any"
                        )
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    if tc.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    optim.step()
                    sched.step()
                    step += 1
                    batch_in_epoch += 1
                    seen += batch["x"].shape[0] * info.world_size
                    in_row += 1
                    for k, v in {"loss": loss, **parts}.items():
                        running[k] = running.get(k, 0.0) + float(v.detach())
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    if task is not None:
                        progress.advance(task, 1, info=f"loss {loss.item():.4f} {rate:.1f} win/s")
                    if step % tc.log_every == 0 or batch_in_epoch == steps_per_epoch:
                        # the mean over the steps since the last row (an epoch's last row,
                        # and the first after a mid-epoch resume, cover fewer than log_every)
                        row = {k: v / in_row for k, v in running.items()}
                        writer.write(kind="train", epoch=epoch + 1, step=step, lr=sched.get_last_lr()[0],
                                     windows_per_s=rate, **row)  # fmt: skip
                        if tb is not None:
                            for k, v in row.items():
                                tb.add_scalar(f"train/{k}", v, step)
                        running, in_row = {}, 0
                    stop_now = _any_rank(stop.requested, info, device)
                    if stop_now or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                        if info.is_main:
                            save_checkpoint(
                                payload(epoch, step, batch_in_epoch), run_dir / "last.pt"
                            )
                    if stop_now:
                        status = "preempted"
                        break
                if task is not None:
                    progress.finish(task)
                if status == "preempted":
                    if info.is_main:
                        (run_dir / "PREEMPTED").write_text(f"step {step}\n")
                    break
                epoch += 1
                batch_in_epoch = 0
                if val_loader is not None:
                    last_val = evaluate(model, val_loader, device, info, amp)
                    val_loss = last_val.get("recon", last_val.get("forecast", float("nan")))
                    writer.write(kind="val", epoch=epoch, step=step, loss=val_loss, **last_val)
                    say(f"epoch {epoch}/{epochs}: validation "
                        + ", ".join(f"{k} {v:.4g}" for k, v in last_val.items()))  # fmt: skip
                    if tb is not None:
                        for k, v in last_val.items():
                            tb.add_scalar(f"val/{k}", v, step)
                    improved = val_loss < best_val
                    if improved:
                        best_val, bad_epochs = val_loss, 0
                    else:
                        bad_epochs += 1
                    if info.is_main:
                        save_checkpoint(payload(epoch, step, 0), run_dir / "last.pt")
                        if improved:
                            save_checkpoint(payload(epoch, step, 0), run_dir / "best.pt")
                    if tc.early_stopping and bad_epochs >= tc.early_stopping:
                        status = "early_stopped"
                        break
                elif info.is_main:
                    save_checkpoint(payload(epoch, step, 0), run_dir / "last.pt")
                    save_checkpoint(payload(epoch, step, 0), run_dir / "best.pt")
        if status != "preempted" and info.is_main:
            (run_dir / "PREEMPTED").unlink(missing_ok=True)
        if tb is not None:
            tb.close()
        return TrainResult(status, epoch, step, best_val, last_val, str(run_dir))
    finally:
        stack.close()
        distributed.teardown(info)


def _any_rank(flag: bool, info, device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(distributed.all_reduce_sum(t, info).item() > 0)


@torch.no_grad()
def _init_clusters(model, loader, device, amp, seed, info, max_batches: int = 50) -> None:
    """k-means on embeddings of up to ``max_batches`` batches, computed on rank 0 and shared."""
    zs = []
    model.eval()
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        with amp:
            _, z, _ = model.encode(batch["x"], batch["mask"], batch["phase"], batch["time"] >= 0)
        zs.append(z[batch["time"] >= 0].float())
    model.train()
    if zs:
        model.cluster.init_kmeans(torch.cat(zs), seed=seed)
    if info.enabled:
        torch.distributed.broadcast(model.cluster.centers.data, src=0)
    model.cluster.initialized = True


class _MetricsWriter:
    """Append-only ``metrics.csv`` (a resumed run continues the same file)."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active = path, active
        if active and not path.exists():
            with open(path, "w", newline="") as fh:
                csv.DictWriter(fh, METRIC_FIELDS).writeheader()

    def drop_after(self, step: int) -> None:
        """Remove the rows of steps after ``step`` (written, then lost with the process)."""
        if not self.active or not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if not r.get("step") or int(r["step"]) <= step]
        if len(keep) == len(rows):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, METRIC_FIELDS)
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, self.path)

    def write(self, **row) -> None:
        if not self.active:
            return
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        clean = {
            k: (f"{v:.6g}" if isinstance(v, float) else v)
            for k, v in row.items()
            if k in METRIC_FIELDS
        }
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, METRIC_FIELDS).writerow(clean)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def read_metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))
