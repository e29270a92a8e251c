"""The device a job runs on: one rule for ``train.device`` and ``embed --device``."""

from __future__ import annotations

import torch

from faextract.errors import ConfigError


def pick_device(name: str, local_rank: int = 0, *, option: str = "train.device") -> torch.device:
    """The device for ``name`` (auto, cpu, cuda, cuda:N) in the process of ``local_rank``.

    ``auto`` and ``cuda`` take the GPU of the same index as the local rank (torchrun with one
    process per GPU); where each process sees a single GPU (SLURM's ``--gpus-per-task=1``)
    every rank takes that one. ``option`` names the setting in error messages.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ConfigError(f"{option}={name} but no CUDA device is available")
    count = torch.cuda.device_count()
    device = torch.device(name)
    if device.index is None:
        if local_rank >= count > 1:
            raise ConfigError(
                f"process of local rank {local_rank} has no GPU of its own: this node shows"
                f" {count} CUDA devices; start at most {count} processes per node or set"
                f" {option}=cpu"
            )
        device = torch.device("cuda", local_rank if local_rank < count else 0)
    elif device.index >= count:
        raise ConfigError(f"{option}={name} but this node shows {count} CUDA device(s)")
    return device
