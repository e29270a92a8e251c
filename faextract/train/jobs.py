"""What `faextract train` can train: the feature encoder or a compressor.

The loop (:mod:`faextract.train.loop`) owns what every run shares: the run directory, the
optimizer and schedule, epochs and steps, DDP, metrics, preemption and atomic checkpoints.
A job owns the rest: its model, its datasets, its loss and validation, and what its
checkpoint records. The config's ``job`` key picks one (:func:`make_job`).

- :class:`EncoderJob`: a :class:`~faextract.models.autoencoder.ClimateAutoencoder` on
  normalized windows ``(B, T, C, H, W)`` (reconstruction, forecast, embedding and optional DEC
  terms); validation against climatology and persistence.
- :class:`CompressorJob`: a :class:`~faextract.compress.model.BlockCodec` on block crops
  ``(B, T, H, W)`` with the rate-distortion loss; no normalization statistics (every block
  normalizes itself), no autocast (the likelihoods need float32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
import xarray as xr

from faextract.checkpoint import Checkpoint, TrainingState, a_kind
from faextract.config import Config
from faextract.data.dataset import WindowDataset, make_loader
from faextract.data.tiling import TileSpec
from faextract.errors import DataError, FaextractError
from faextract.train.data import TrainingData, statistics
from faextract.train.metrics import METRIC_FIELDS
from faextract.train.mixing import flip_windows, mix_windows
from faextract.train.plan import (
    check_resume_compatible,
    check_same_model,
    first_difference,
    model_args,
    tile_spec,
)  # fmt: skip


@dataclass
class ModelRecord:
    """What a job's checkpoint records about its model (the loop adds weights, config, data
    facts and the training state): :class:`~faextract.checkpoint.Checkpoint`'s fields."""

    kind: str
    model_args: dict
    stats: xr.Dataset
    tiles: TileSpec | None


class Job(Protocol):
    """What the loop asks of a job (``kind``, ``model``, ``items``/``unit``/``rate`` for the
    log lines, ``metrics`` for ``metrics.csv``'s columns, ``find_unused_parameters`` for DDP)."""

    kind: str
    model: torch.nn.Module

    def autocast(self, device): ...
    def compile(self, mode: str) -> None: ...
    def datasets(self, per_rank_batch: int, info, pin: bool): ...
    def start_epoch(self, epoch: int, loader, device, amp, info) -> None: ...
    def losses(self, net, batch): ...
    def validate(self, loader, device, info, amp) -> tuple[float, dict]: ...
    def restore(self, state: TrainingState) -> None: ...
    def record(self) -> ModelRecord: ...


def _datasets(data: TrainingData, make, per_rank_batch: int, info, tc, pin: bool, items: str):
    """The training dataset (shuffled, the same number of batches on every rank) and the
    validation loader (None without a validation range); ``make(source, cube, **kw)`` builds
    one dataset."""
    src, cube = data.part(data.train_range)
    train_ds = make(src, cube, shuffle=True, seed=tc.seed, rank=info.rank,
                    world_size=info.world_size, drop_uneven=True, batch_size=per_rank_batch)  # fmt: skip
    if train_ds.num_batches() == 0:
        raise DataError(
            f"no training {items}: the training range is shorter than one {items} per process"
        )
    if data.val_range is None:
        return train_ds, None
    src, cube = data.part(data.val_range)
    val_ds = make(src, cube, rank=info.rank, world_size=info.world_size, batch_size=per_rank_batch)
    return train_ds, make_loader(val_ds, num_workers=tc.num_workers, pin_memory=pin)


class EncoderJob:
    """The feature encoder; see the module docstring."""

    kind = "encoder"
    items = "training windows"
    unit = "win"
    rate = "windows_per_s"
    metrics = METRIC_FIELDS

    def __init__(self, config: Config, data: TrainingData, ckpt: Checkpoint | None, info, say):
        from faextract.models.autoencoder import ClimateAutoencoder

        self.config, self.data = config, data
        self.args = model_args(config, data.cube)
        if ckpt is not None:
            check_resume_compatible(ckpt, self.args, data.cube.channels, data.source.select)
        self.stats = statistics(config, data, ckpt, info, say)
        self.model = ClimateAutoencoder(**self.args)
        self.spec = tile_spec(config, self.model.multiple)
        self.say, self.resuming = say, ckpt is not None
        self.cluster_on = False
        self.find_unused_parameters = bool(config.model.clusters)

    def autocast(self, device):
        return torch_autocast(device, self.config.train.bf16)

    def compile(self, mode: str) -> None:
        self.model.compile_cells(mode)

    def datasets(self, per_rank_batch: int, info, pin: bool):
        def make(src, cube, **kw):
            return WindowDataset(src, self.stats, self.spec, cube=cube, **kw)

        train_ds, val = _datasets(self.data, make, per_rank_batch, info, self.config.train, pin,
                                  "window")  # fmt: skip
        # the spatial tile of every training window: train.mixup mixes within a tile
        ids = {tile: i for i, tile in enumerate(sorted({w.tile for w in train_ds.tiler.windows}))}
        self.tile_of = torch.tensor([ids[w.tile] for w in train_ds.tiler.windows])
        eof = self.model.eof
        if eof is not None and not eof.is_fitted and not self.resuming:  # (train.init: fitted)
            from faextract.train.eofs import fit_eof_components

            fit_eof_components(self.model, *self.data.part(self.data.train_range), self.stats,
                               self.spec, self.say)  # fmt: skip
        return train_ds, val

    def start_epoch(self, epoch: int, loader, device, amp, info) -> None:
        """The clustering term starts at ``cluster_start_epoch`` (k-means on first use)."""
        from faextract.train.evaluation import init_clusters

        cluster = self.model.cluster
        self.cluster_on = cluster is not None and epoch >= self.config.model.cluster_start_epoch
        if self.cluster_on and not cluster.initialized:
            init_clusters(self.model, loader, device, amp, self.config.train.seed, info)

    def losses(self, net, batch):
        from faextract.train.losses import compute_losses

        if self.config.train.mixup > 0 and net.training:
            tiles = self.tile_of[batch.index.cpu()]
            batch = mix_windows(batch, self.config.train.mixup, tiles)
        if self.config.train.flip > 0 and net.training:
            batch = flip_windows(batch, self.config.train.flip)
        return compute_losses(net, batch, self.config, self.cluster_on)

    def validate(self, loader, device, info, amp) -> tuple[float, dict]:
        """``(validation loss, metrics)``: reconstruction MSE (forecast MSE without one), or
        the embedding decoder's loss with ``train.best_by: embedding``."""
        from faextract.train.evaluation import validate

        metrics = validate(self.model, loader, device, info, amp)
        if self.config.train.best_by == "embedding":
            return metrics["embedding"], metrics
        return metrics.get("recon", metrics.get("forecast", float("nan"))), metrics

    def restore(self, state: TrainingState) -> None:
        if self.model.cluster is not None:
            self.model.cluster.initialized = bool(state.cluster_initialized)

    @property
    def cluster_initialized(self) -> bool:
        return bool(self.model.cluster is not None and self.model.cluster.initialized)

    def record(self) -> ModelRecord:
        return ModelRecord(self.kind, self.args, self.stats, self.spec)


class CompressorJob:
    """A learned compressor; see the module docstring."""

    kind = "compressor"
    items = "training blocks"
    unit = "blocks"
    rate = "blocks_per_s"
    metrics = ("kind", "epoch", "step", "lr", "loss", "bits", "mse", "blocks_per_s", "time")
    find_unused_parameters = False

    def __init__(self, config: Config, data: TrainingData, ckpt: Checkpoint | None, info, say):
        from faextract.compress.model import BlockCodec

        self.config, self.data = config, data
        c = config.codec
        self.args = {"widths": tuple(c.widths), "sr_blocks": c.sr_blocks}
        if ckpt is not None:
            check_same_model(ckpt, self.args, "codec")
        self.model = BlockCodec(**self.args)
        self.stats = xr.Dataset()

    def autocast(self, device):
        return contextlib.nullcontext()

    def compile(self, mode: str) -> None:
        raise FaextractError("train.compile applies to the encoder's cells, not a compressor")

    def datasets(self, per_rank_batch: int, info, pin: bool):
        from faextract.compress.training import CodecBlocks

        def make(src, cube, **kw):
            return CodecBlocks(src, crop=self.config.codec.crop, cube=cube, **kw)

        return _datasets(self.data, make, per_rank_batch, info, self.config.train, pin, "block")

    def start_epoch(self, epoch: int, loader, device, amp, info) -> None:
        pass

    def losses(self, net, batch):
        from faextract.compress.training import codec_losses

        return codec_losses(net, batch, self.config.codec.lam)

    def validate(self, loader, device, info, amp) -> tuple[float, dict]:
        from faextract.compress.training import validate_codec

        metrics = validate_codec(self.model, loader, device, info, self.config.codec.lam)
        return metrics.pop("loss", float("nan")), metrics

    def restore(self, state: TrainingState) -> None:
        pass

    cluster_initialized = False

    def record(self) -> ModelRecord:
        return ModelRecord(self.kind, self.args, self.stats, None)


def torch_autocast(device, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16)


JOBS = {"encoder": EncoderJob, "compressor": CompressorJob}


def init_weights(job, path: str, say) -> None:
    """Load the weights of the checkpoint ``path`` into ``job``'s model (fine-tuning): the same
    kind of model with the same architecture, or a one-line error naming the difference."""
    ckpt = Checkpoint.load(path).require(job.kind, path, "train.init")
    # (a model trained before z_t was causal has the same weights)
    diff = first_difference(ckpt.model_args, job.args, ignore=("causal_embedding",))
    if diff is not None:
        key, theirs, ours = diff
        raise FaextractError(
            f"train.init: {path} has model {key} {theirs!r}, the config builds {ours!r}"
        )
    job.model.load_state_dict(ckpt.state_dict)
    say(f"starting from the weights of {path}")


def make_job(config: Config, data: TrainingData, ckpt: Checkpoint | None, info, say):
    """The job the config's ``job`` names."""
    if ckpt is not None and ckpt.kind != config.job:
        raise FaextractError(
            f"--resume: the run's checkpoint is {a_kind(ckpt.kind)}, the config trains "
            f"{a_kind(config.job)} (job: {config.job})"
        )
    return JOBS[config.job](config, data, ckpt, info, say)
