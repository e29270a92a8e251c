"""Seeds and random-number state: a run is reproducible, and a resumed run continues the
same random stream.

Only torch draws random numbers during training (dropout; k-means seeding uses its own
generator; the data order is a pure function of seed and epoch), so torch's CPU and CUDA
generator states are all a checkpoint needs.
"""

from __future__ import annotations

import os

import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
