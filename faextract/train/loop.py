"""The training loop: :func:`train`, restartable, from a laptop to many GPUs.

:func:`train` opens the cube, holds out the last ``val_fraction`` of the time axis, and hands
the rest to the config's job (:mod:`faextract.train.jobs`: the feature encoder, or a
compressor), which builds the model, its datasets, loss and validation. The loop optimizes
with AdamW, warm-up + cosine learning rate and gradient clipping, validates every epoch, and
writes checkpoints (``last.pt`` every epoch or ``checkpoint_every``
steps, ``best.pt`` on improved validation loss), atomically and from rank 0 only. With
``train.ema`` it validates and saves a moving average of the weights
(:mod:`faextract.train.averaging`).

``resume=True`` continues from ``last.pt`` with the same optimizer, scheduler, RNG and data
position (the batch order is a function of seed and epoch, so skipping the batches already
done reproduces the original run). SIGUSR1/SIGTERM (SLURM's warning before a time limit) make
the job checkpoint at the next step and stop with status ``"preempted"``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from faextract.checkpoint import Checkpoint, TrainingState
from faextract.config import Config, save_config
from faextract.data.dataset import make_loader
from faextract.data.sources import resolve_paths
from faextract.errors import ConfigError, FaextractError
from faextract.outputs import PREEMPTED_FILE, check_not_input
from faextract.runtime import distributed
from faextract.runtime.device import pick_device
from faextract.runtime.locks import Lock
from faextract.runtime.progress import Progress
from faextract.runtime.seeding import rng_state, seed_everything, set_rng_state
from faextract.runtime.signals import StopFlag
from faextract.train.averaging import WeightAverage
from faextract.train.data import open_data
from faextract.train.jobs import init_weights, make_job
from faextract.train.metrics import MetricsWriter, tensorboard
from faextract.train.plan import LOCK_FILE, lr_lambda, prepare_run_dir


@dataclass
class TrainResult:
    status: str  # "finished", "early_stopped" or "preempted"
    epoch: int
    step: int
    best_val: float
    val_metrics: dict = field(default_factory=dict)
    run_dir: str = ""


def train(
    config: Config, run_dir, *, resume: bool = False, overwrite: bool = False, plain_progress=None
) -> TrainResult:
    """Train per ``config`` into ``run_dir``; see the module docstring."""
    device = pick_device(config.train.device, distributed.launch_info().local_rank)
    info = distributed.setup(device)
    run_dir = Path(run_dir)
    stack = contextlib.ExitStack()
    run = None
    finished = False
    try:
        progress = stack.enter_context(Progress(plain=plain_progress, unit="batches"))
        if info.is_main:
            _claim_run_dir(config, run_dir, resume, overwrite, stack)
        seed_everything(config.train.seed, config.train.deterministic)
        if config.train.batch_size % info.world_size:
            raise ConfigError(
                f"train.batch_size={config.train.batch_size} (global) must be divisible by the "
                f"{info.world_size} processes"
            )
        run = _Run(config, run_dir, device, info, progress, resume)
        status = run.fit()
        finished = True
        return TrainResult(status, run.epoch, run.step, run.best_val, run.last_val, str(run_dir))
    finally:
        # DDP's reducer holds the process group: free the run (and its threads' work) before the
        # group goes, or a later collection at interpreter exit aborts gloo's worker threads.
        del run
        gc.collect()
        stack.close()
        distributed.teardown(info, wait=finished)


def _claim_run_dir(config: Config, run_dir: Path, resume: bool, overwrite: bool, stack) -> None:
    """Check ``run_dir`` may be written (never an input; ours or empty), create and lock it."""
    inputs = resolve_paths(list(config.data.paths))
    inputs += [config.data.stats] if config.data.stats else []
    check_not_input(run_dir, inputs)
    if run_dir.exists() and not run_dir.is_dir():
        raise FaextractError(f"{run_dir}: is a file; --out names a run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    # One run per directory: a second would write every metrics row twice.
    stack.enter_context(Lock(run_dir / LOCK_FILE, f"the run directory {run_dir}"))
    prepare_run_dir(run_dir, resume, overwrite)


class _Run:
    """One training run's moving parts: data, model (and its DDP wrapper), optimizer and
    schedule, the metrics log, and the position (epoch, step, batch in epoch, best loss)."""

    def __init__(self, config: Config, run_dir: Path, device, info, progress, resume: bool):
        self.config, self.run_dir, self.device, self.info = config, run_dir, device, info
        self.progress = progress
        tc = config.train
        self.per_rank_batch = tc.batch_size // info.world_size
        self.data = open_data(config, self.say)
        ckpt = Checkpoint.load(run_dir / "last.pt") if resume else None
        self.job = make_job(config, self.data, ckpt, info, self.say)
        if tc.init and ckpt is None:
            init_weights(self.job, tc.init, self.say)
        self.model = self.job.model.to(device)
        self.average = WeightAverage(self.model, tc.ema) if tc.ema else None
        self.train_ds, self.val_loader = self.job.datasets(
            self.per_rank_batch, info, pin=device.type == "cuda"
        )
        total_steps = self._plan_steps()
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda(self.warmup, total_steps))
        self.epoch, self.step, self.batch_in_epoch, self.best_val, self.bad_epochs = 0, 0, 0, math.inf, 0
        self.running, self.in_row, self.resumed_row, self.last_val = {}, 0, None, {}
        if ckpt is not None:
            self._restore(ckpt)
        if tc.compile:
            self.job.compile(tc.compile_mode)
        self.net = self.model
        if info.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.job.find_unused_parameters,
            )
        self.amp = self.job.autocast(device)
        self.writer = MetricsWriter(run_dir / "metrics.csv", info.is_main, self.job.metrics)
        if ckpt is not None:  # rows logged after the checkpoint (a kill -9) are logged again
            self.writer.drop_after(self.step)
        self.tb = tensorboard(run_dir) if info.is_main else None
        if info.is_main:
            save_config(config, run_dir / "config.yaml")

    def say(self, text: str) -> None:
        if self.info.is_main:
            self.progress.note(text)

    def _plan_steps(self) -> int:
        """Epochs, steps per epoch and warm-up; returns the run's total optimizer steps."""
        tc = self.config.train
        self.steps_per_epoch = self.train_ds.num_batches()
        self.epochs = tc.epochs
        if tc.steps:  # a budget in optimizer steps: as many epochs as it takes, whatever the data
            self.epochs = max(1, math.ceil(tc.steps / self.steps_per_epoch))
        total_steps = self.steps_per_epoch * self.epochs
        self.warmup = tc.warmup_steps
        if self.warmup > total_steps:
            self.warmup = max(1, total_steps // 10)
            self.say(f"train.warmup_steps={tc.warmup_steps} is longer than the {total_steps} steps "
                     f"of this run; warming up over {self.warmup} steps instead")  # fmt: skip
        params = sum(p.numel() for p in self.model.parameters())
        self.say(f"{len(self.train_ds)} {self.job.items}, {self.steps_per_epoch} steps per epoch, "
                 f"{self.epochs} epochs" + (f" (train.steps={tc.steps})" if tc.steps else "")
                 + f"; {params:,} parameters")  # fmt: skip
        return total_steps

    def _restore(self, ckpt: Checkpoint) -> None:
        state = ckpt.training
        if state is None or state.optimizer is None:
            raise FaextractError(
                f"--resume: {self.run_dir / 'last.pt'} holds no training state (an "
                "inference-only copy); train anew or resume from the run's own last.pt"
            )
        # With train.ema the checkpoint's weights are the average, the live ones ride along.
        live = state.live_weights if state.live_weights is not None else ckpt.state_dict
        self.model.load_state_dict(live)
        if self.average is not None:
            self.average.reset(self.model)
            if state.live_weights is not None:
                self.average.load_state_dict(ckpt.state_dict)
                self.average.updates = state.step
        self.optim.load_state_dict(state.optimizer)
        self.sched.load_state_dict(state.scheduler)
        set_rng_state(state.rng)
        self.epoch, self.step = state.epoch, state.step
        self.batch_in_epoch = state.batch_in_epoch
        self.best_val, self.bad_epochs = state.best_val, state.bad_epochs
        if self.batch_in_epoch:
            self.resumed_row = state.running
        self.job.restore(state)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> str:
        """Train to the end (or a stop request, or early stopping); returns the status."""
        status = "finished"
        with StopFlag() as stop:
            while self.epoch < self.epochs:
                if self._train_epoch(stop):
                    status = "preempted"
                    if self.info.is_main:
                        (self.run_dir / PREEMPTED_FILE).write_text(f"step {self.step}\n")
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                if self._end_epoch():
                    status = "early_stopped"
                    break
        if status != "preempted" and self.info.is_main:
            (self.run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
        if self.tb is not None:
            self.tb.close()
        return status

    def _train_epoch(self, stop) -> bool:
        """The rest of the current epoch; True if a stop was requested (checkpoint written)."""
        tc, info = self.config.train, self.info
        self.train_ds.set_epoch(self.epoch)
        self.train_ds.skip_batches = self.batch_in_epoch
        loader = make_loader(
            self.train_ds, num_workers=tc.num_workers, pin_memory=self.device.type == "cuda"
        )
        had_clusters = self.job.cluster_initialized
        self.job.start_epoch(self.epoch, loader, self.device, self.amp, info)
        if self.average is not None and self.job.cluster_initialized and not had_clusters:
            self.average.reset(self.model)  # k-means moved the centres: average from here
        task = None
        if info.is_main:
            task = self.progress.start(f"epoch {self.epoch + 1}/{self.epochs}",
                                       total=self.steps_per_epoch, done=self.batch_in_epoch)  # fmt: skip
        t0, seen = time.perf_counter(), 0
        if self.resumed_row is not None:  # the row a mid-epoch checkpoint had begun
            self.running, self.in_row = dict(self.resumed_row["sums"]), int(self.resumed_row["steps"])
            self.resumed_row = None
        else:
            self.running, self.in_row = {}, 0
        stopped = False
        for batch in loader:
            loss = self._step(batch.to(self.device))
            seen += len(batch) * info.world_size
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            if task is not None:
                self.progress.advance(task, 1, info=f"loss {loss:.4f} {rate:.1f} {self.job.unit}/s")
            if self.step % tc.log_every == 0 or self.batch_in_epoch == self.steps_per_epoch:
                self._log_row(rate)
            stopped = _any_rank(stop.requested, info, self.device)
            if stopped or (tc.checkpoint_every and self.step % tc.checkpoint_every == 0):
                self._save("last.pt", batch_in_epoch=self.batch_in_epoch)
            if stopped:
                break
        if task is not None:
            self.progress.finish(task)
        return stopped

    def _step(self, batch) -> float:
        """One optimizer step on ``batch``; adds to the metrics row; returns the loss."""
        tc = self.config.train
        with self.amp:
            loss, parts = self.job.losses(self.net, batch)
        if _any_rank(not bool(torch.isfinite(loss.detach())), self.info, self.device):
            raise FaextractError(
                f"training diverged at step {self.step + 1}: the loss is not finite "
                f"(train.lr={tc.lr:g}, train.grad_clip={tc.grad_clip:g}); lower the "
                f"learning rate or clip gradients; {self.run_dir / 'last.pt'} holds the "
                "last good checkpoint, if any"
            )
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optim.step()
        self.sched.step()
        if self.average is not None:
            self.average.update(self.model)
        self.step += 1
        self.batch_in_epoch += 1
        self.in_row += 1
        for k, v in {"loss": loss, **parts}.items():
            self.running[k] = self.running.get(k, 0.0) + float(v.detach())
        return loss.item()

    def _log_row(self, rate: float) -> None:
        # the mean over the steps since the last row (an epoch's last row, and the first
        # after a mid-epoch resume, cover fewer than log_every)
        row = {k: v / self.in_row for k, v in self.running.items()}
        self.writer.write(kind="train", epoch=self.epoch + 1, step=self.step,
                          lr=self.sched.get_last_lr()[0], **{self.job.rate: rate}, **row)  # fmt: skip
        if self.tb is not None:
            for k, v in row.items():
                self.tb.add_scalar(f"train/{k}", v, self.step)
        self.running, self.in_row = {}, 0

    def _end_epoch(self) -> bool:
        """Validate and checkpoint after an epoch; True when early stopping ends the run."""
        if self.val_loader is None:
            self._save("last.pt", "best.pt")
            return False
        averaged = self.average.applied(self.model) if self.average else contextlib.nullcontext()
        with averaged:
            val_loss, self.last_val = self.job.validate(
                self.val_loader, self.device, self.info, self.amp
            )
        self.writer.write(kind="val", epoch=self.epoch, step=self.step, loss=val_loss, **self.last_val)
        self.say(f"epoch {self.epoch}/{self.epochs}: validation "
                 + ", ".join(f"{k} {v:.4g}" for k, v in self.last_val.items()))  # fmt: skip
        if self.tb is not None:
            for k, v in self.last_val.items():
                self.tb.add_scalar(f"val/{k}", v, self.step)
        improved = val_loss < self.best_val
        if improved:
            self.best_val, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        self._save("last.pt", *(["best.pt"] if improved else []))
        early = self.config.train.early_stopping
        return bool(early and self.bad_epochs >= early)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, batch_in_epoch: int = 0) -> Checkpoint:
        """The run as it stands, ``batch_in_epoch`` batches into the current epoch."""
        cube, (t0, t1) = self.data.cube, self.data.train_range
        rec = self.job.record()
        return Checkpoint(
            kind=rec.kind,
            model_args=rec.model_args,
            stats=rec.stats,
            tiles=rec.tiles,
            # what embed and compress read: the averaged weights under train.ema
            state_dict=self.average.state_dict(self.model) if self.average else self.model.state_dict(),
            config=self.config.to_dict(),
            channels=tuple(cube.channels),
            variables=tuple(cube.variables),
            levels=tuple(float(v) for v in cube.dataset["level"].values)
            if "level" in cube.dataset.dims
            else None,
            grid=cube.grid(),
            time_units=str(cube.time.encoding.get("units", "")),
            train_range=(str(cube.time.values[t0]), str(cube.time.values[t1 - 1])),
            training=TrainingState(
                epoch=self.epoch,
                step=self.step,
                batch_in_epoch=batch_in_epoch,
                best_val=self.best_val,
                bad_epochs=self.bad_epochs,
                cluster_initialized=self.job.cluster_initialized,
                optimizer=self.optim.state_dict(),
                scheduler=self.sched.state_dict(),
                rng=rng_state(),
                val_metrics=self.last_val,
                # the metrics row in progress, so a mid-epoch resume logs the same means
                running={"sums": dict(self.running), "steps": self.in_row},
                live_weights=self.model.state_dict() if self.average else None,
            ),
        )

    def _save(self, *names: str, batch_in_epoch: int = 0) -> None:
        if not self.info.is_main:
            return
        ckpt = self.checkpoint(batch_in_epoch)
        for name in names:
            ckpt.save(self.run_dir / name)


def _any_rank(flag: bool, info, device) -> bool:
    """``flag`` on any process (an all-reduce under DDP, so every rank takes the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(distributed.all_reduce_sum(t, info).item() > 0)
