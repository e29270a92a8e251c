"""Self-describing, atomically written checkpoints.

One file holds everything needed to rebuild and use a model without the training config
file: the model's hyperparameters, the resolved config, the normalization statistics, the
channel list (variables and levels), grid and calendar facts, the faextract version and the
training position (epoch, step, batch within epoch), plus optimizer, scheduler and RNG states
for ``--resume``. Only tensors and plain Python types are stored, so it loads with
``torch.load(weights_only=True)``.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target: a kill at any moment leaves either the old checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from faextract import __version__
from faextract.data.tiling import TileSpec
from faextract.errors import FaextractError, first_line

FORMAT_VERSION = 1


def stats_to_dict(stats: xr.Dataset) -> dict:
    """Normalization statistics as plain types + tensors (safe for weights_only loading)."""
    out = {
        "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in stats.attrs.items()},
        "vars": {},
    }
    for name, da in stats.variables.items():
        values = da.values
        if values.dtype.kind in "US":
            data = [str(v) for v in values.tolist()]
        else:
            data = torch.from_numpy(np.array(values, copy=True))
        out["vars"][name] = {"dims": list(da.dims), "data": data, "attrs": dict(da.attrs)}
    return out


def stats_from_dict(d: dict) -> xr.Dataset:
    coords, data_vars = {}, {}
    for name, v in d["vars"].items():
        data = v["data"].numpy() if torch.is_tensor(v["data"]) else np.asarray(v["data"])
        entry = (tuple(v["dims"]), data, v.get("attrs", {}))
        if tuple(v["dims"]) == (name,):
            coords[name] = entry
        else:
            data_vars[name] = entry
    return xr.Dataset(data_vars, coords=coords, attrs=d.get("attrs", {}))


def _on_cpu(obj):
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def write_atomic(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` (tensors and plain values) atomically to ``path``, its tensors on the
    CPU: a run trained on a GPU loads with a plain ``torch.load`` on a machine without one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _on_cpu(payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); a checkpoint gets the usual mode (the
        # umask's), so that a group sharing a project folder can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_payload(path: str | os.PathLike, map_location="cpu") -> dict:
    """The payload of a faextract checkpoint file; anything else is a one-line error."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FaextractError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise FaextractError(f"{path}: a directory, not a checkpoint file (e.g. {path}/best.pt)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":  # torch.save writes a zip archive
        raise FaextractError(f"{path}: not a PyTorch checkpoint (truncated or another format)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        if "Weights only load failed" in str(err):
            raise FaextractError(
                f"{path}: not a faextract checkpoint (it holds Python objects, not only tensors "
                "and plain values: saved by another program?)"
            ) from err
        msg = first_line(err).split(". ")[0]
        raise FaextractError(f"{path}: not a readable checkpoint ({msg})") from err
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise FaextractError(f"{path}: not a faextract checkpoint")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise FaextractError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this faextract "
            f"understands ({FORMAT_VERSION}); upgrade faextract"
        )
    for name, tensor in (ckpt["model"].get("state_dict") or {}).items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FaextractError(
                f"{path}: the model weights {name!r} hold NaN or infinite values (a diverged "
                "training run?); use an earlier checkpoint"
            )
    return ckpt


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def a_kind(kind: str) -> str:
    """``"an encoder"``, ``"a compressor"``."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


@dataclass
class TrainingState:
    """Where a training run stood when the checkpoint was written (what ``--resume`` needs).

    ``running`` is the metrics row in progress (``{"sums": {name: sum}, "steps": n}``), so a
    mid-epoch resume logs the same means as an uninterrupted run. ``live_weights``: under
    ``train.ema`` the checkpoint's ``state_dict`` is the weights' average and these are the
    weights the optimizer was moving (None without it).
    """

    epoch: int
    step: int
    batch_in_epoch: int
    best_val: float
    bad_epochs: int = 0
    cluster_initialized: bool = False
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict | None = None
    val_metrics: dict = field(default_factory=dict)
    running: dict | None = None
    # The weights being optimized when the checkpoint's own are their average (train.ema).
    live_weights: dict | None = None


@dataclass
class Checkpoint:
    """Everything needed to rebuild and use a trained model, without its training config file.

    model_args: the :class:`~faextract.models.autoencoder.ClimateAutoencoder` constructor's
        keyword arguments; state_dict: its weights.
    config: the resolved training config (:meth:`faextract.config.Config.to_dict`).
    stats: the normalization statistics (channel means/stds, climatology).
    channels / variables / levels: what the model reads, in order.
    grid: the training grid (``nlat, nlon, dlat, dlon, lat_range, lon_range, periodic,
        calendar``), which an input to embed must match.
    tiles: how training cut windows (``warmup`` 0); None for a compressor.
    kind: ``"encoder"`` (a :class:`~faextract.models.autoencoder.ClimateAutoencoder`, what
        ``embed`` reads) or ``"compressor"`` (a :class:`~faextract.compress.model.BlockCodec`,
        what ``compress --checkpoint`` reads; its ``stats`` are empty: blocks normalize
        themselves).
    training: the training position and optimizer/scheduler/RNG states; ``None`` in an
        inference-only copy (:meth:`for_inference`).

    This class is the one place that knows the file's layout (:meth:`to_payload`,
    :meth:`from_payload`); format 1 files from any earlier faextract load unchanged.
    """

    model_args: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    config: dict
    stats: xr.Dataset
    channels: tuple[str, ...]
    variables: tuple[str, ...]
    levels: tuple[float, ...] | None
    grid: dict
    tiles: TileSpec | None
    time_units: str = ""
    train_range: tuple[str, str] | None = None
    training: TrainingState | None = None
    format_version: int = FORMAT_VERSION
    faextract_version: str = __version__
    kind: str = "encoder"

    def require(self, kind: str, path, needed_by: str) -> Checkpoint:
        """This checkpoint, if it holds a ``kind`` model; else a one-line error."""
        if self.kind != kind:
            raise FaextractError(
                f"{os.fspath(path)}: {a_kind(self.kind)} checkpoint; {needed_by} needs "
                f"{a_kind(kind)} "
                f"(trained by `faextract train` with job: {kind})"
            )
        return self

    @property
    def embedding_dim(self) -> int:
        return int(self.model_args["embedding_dim"])

    @property
    def eof_components(self) -> int:
        """How many leading components of z are the input's EOF principal components."""
        return int(self.model_args.get("eof_components", 0))

    @property
    def filters(self) -> int:
        """Channels of the recurrent state (the ``--latent`` fields)."""
        return int(self.model_args["filters"])

    @property
    def trained_data(self) -> dict:
        """The ``data`` section of the training config (how the files were opened)."""
        return dict((self.config or {}).get("data") or {})

    def build_model(self):
        """The network, with its weights loaded, in eval mode."""
        if self.kind == "compressor":
            from faextract.compress.model import BlockCodec

            codec = BlockCodec(**self.model_args)
            codec.load_state_dict(self.state_dict)
            return codec.eval()
        from faextract.models.autoencoder import ClimateAutoencoder

        model = ClimateAutoencoder(**self.model_args)
        model.load_state_dict(self.state_dict)
        if model.cluster is not None:
            model.cluster.initialized = True
        return model.eval()

    def for_inference(self) -> Checkpoint:
        """A copy without the training state (smaller, for sharing)."""
        return dataclasses.replace(self, training=None)

    # -- the file layout (format 1) ---------------------------------------------------------
    def to_payload(self) -> dict:
        t = self.tiles
        tiles = None
        if t is not None:
            tiles = {"window": t.window, "stride": t.stride, "tile": list(t.tile) if t.tile else None,
                     "halo": t.halo, "multiple": t.multiple, "edge": t.edge}  # fmt: skip
        payload = {
            "kind": self.kind,
            "model": {"args": dict(self.model_args), "state_dict": self.state_dict},
            "config": self.config,
            "stats": stats_to_dict(self.stats),
            "channels": list(self.channels),
            "variables": list(self.variables),
            "levels": [float(v) for v in self.levels] if self.levels is not None else None,
            "grid": dict(self.grid),
            "time_units": self.time_units,
            "train_range": list(self.train_range) if self.train_range else None,
            "tiles": tiles,
            "format_version": FORMAT_VERSION,
            "faextract_version": __version__,
        }
        if self.training is not None:
            payload.update(dataclasses.asdict(self.training))
        return payload

    @classmethod
    def from_payload(cls, d: dict) -> Checkpoint:
        tiles = d.get("tiles")
        training = None
        if "epoch" in d and "step" in d:
            names = {f.name for f in dataclasses.fields(TrainingState)}
            training = TrainingState(**{k: v for k, v in d.items() if k in names})
        args = dict(d["model"]["args"])
        kind = str(d.get("kind", "encoder"))  # files from before compressors: encoders
        if kind == "encoder":
            # Models trained before z_t was made causal attended to later steps of the window.
            args.setdefault("causal_embedding", False)
        return cls(
            model_args=args,
            state_dict=d["model"]["state_dict"],
            config=d.get("config") or {},
            stats=stats_from_dict(d["stats"]),
            channels=tuple(d["channels"]),
            variables=tuple(d["variables"]),
            levels=tuple(float(v) for v in d["levels"]) if d.get("levels") else None,
            grid=dict(d["grid"]),
            tiles=None if tiles is None else TileSpec(
                window=tiles["window"],
                stride=tiles.get("stride"),
                tile=tuple(tiles["tile"]) if tiles.get("tile") else None,
                halo=tiles.get("halo", 0),
                multiple=tiles.get("multiple", 1),
                edge=tiles.get("edge", "pad"),
            ),
            time_units=str(d.get("time_units") or ""),
            train_range=tuple(d["train_range"]) if d.get("train_range") else None,
            training=training,
            format_version=int(d["format_version"]),
            faextract_version=str(d.get("faextract_version", "")),
            kind=kind,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (a kill leaves the old file or the new one, never a torn one)."""
        write_atomic(self.to_payload(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint file; anything that is not one is a one-line error."""
        try:
            return cls.from_payload(_read_payload(path))
        except (KeyError, TypeError, ValueError) as err:
            raise FaextractError(
                f"{os.fspath(path)}: not a complete faextract checkpoint ({first_line(err)})"
            ) from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """:meth:`Checkpoint.load`."""
    return Checkpoint.load(path)


def export_for_inference(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint without optimizer/scheduler/RNG state (smaller, for sharing)."""
    Checkpoint.load(src).for_inference().save(dst)
