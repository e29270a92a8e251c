"""Process-group setup for DDP, from torchrun's or SLURM's environment.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
``srun`` without torchrun sets ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and the
first host of ``SLURM_JOB_NODELIST`` serves as the rendezvous. Either way we use ``env://``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

#: Seconds a finished rank waits for the others at shutdown before it goes anyway.
TEARDOWN_TIMEOUT_S = 300


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _from_slurm() -> None:
    """Fill torchrun-style variables from SLURM's when srun started us directly."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if ntasks <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        os.environ["MASTER_ADDR"] = first_host(nodes)
    os.environ.setdefault(
        "MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000)
    )


def first_host(nodelist: str) -> str:
    """First host of a SLURM nodelist: ``node[03-05,07]`` -> ``node03``."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    prefix, rest = nodelist.split("[", 1)
    first = rest.split(",")[0].split("-")[0].rstrip("]")
    return prefix + first


def launch_info() -> DistInfo:
    """This process's rank, world size and local rank, as the launcher set them."""
    _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: torch.device | None = None) -> DistInfo:
    """Initialize the default process group when launched with several processes.

    The backend follows the device this process trains on: NCCL for a CUDA device, gloo
    otherwise (so ``train.device=cpu`` works on a GPU node too).
    """
    info = launch_info()
    if info.enabled and not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return info


def teardown(info: DistInfo, *, wait: bool = False) -> None:
    """Destroy the process group; ``wait`` first meets every rank at a barrier (a clean finish:
    no rank tears its connections down while another still talks to it). Not after an error,
    where the other ranks may never arrive."""
    if info.enabled and dist.is_initialized():
        if wait:
            try:
                if dist.get_backend() == "gloo":  # bounded: a rank that never comes is named
                    dist.monitored_barrier(timeout=timedelta(seconds=TEARDOWN_TIMEOUT_S))
                else:
                    dist.barrier()
            except RuntimeError as err:  # the job's exit status tells; do not hang on it
                print(f"rank {info.rank}: ranks did not meet before shutdown: {err}", flush=True)
        dist.destroy_process_group()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
