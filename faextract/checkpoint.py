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

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from faextract import __version__
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


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` atomically to ``path``, its tensors on the CPU: a run trained on a GPU
    loads with a plain ``torch.load`` on a machine without one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _on_cpu(dict(payload, format_version=FORMAT_VERSION, faextract_version=__version__))
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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a faextract checkpoint; anything else is a one-line error."""
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


def build_model(ckpt: dict):
    """The network described by a checkpoint, with its weights loaded, in eval mode."""
    from faextract.models.autoencoder import ClimateAutoencoder

    model = ClimateAutoencoder(**ckpt["model"]["args"])
    model.load_state_dict(ckpt["model"]["state_dict"])
    if model.cluster is not None:
        model.cluster.initialized = True
    return model.eval()


def export_for_inference(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint without optimizer/scheduler/RNG state (smaller, for sharing)."""
    ckpt = load_checkpoint(src)
    for key in ("optimizer", "scheduler", "rng", "scaler"):
        ckpt.pop(key, None)
    save_checkpoint(ckpt, dst)
