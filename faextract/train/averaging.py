"""An exponential moving average of a model's weights (``train.ema``).

Training on a short record (132 months of a decade) ends in weights that depend on the last
few batches and on the seed; their average over the last few hundred steps is a flatter,
steadier point. With ``train.ema = d`` the loop keeps, after every optimizer step ``n``,

    shadow <- shadow + (1 - d_n) (weights - shadow),   d_n = min(d, (1 + n) / (10 + n)),

(the warm-up ``d_n`` keeps the first steps' average from leaning on the initialization), and
validates, selects ``best.pt`` by, and saves the averaged weights: what ``embed`` reads is the
average. The live weights travel in the checkpoint's training state so ``--resume`` continues
both.

Floating-point parameters and buffers are averaged in float32; integer buffers (counters) are
copied.
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    """The moving average of ``model``'s state (see the module docstring); ``updates`` counts
    the steps averaged so far (the warm-up's ``n``)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model: torch.nn.Module) -> None:
        """Restart the average at ``model``'s current weights (after a jump such as k-means
        placing the cluster centres)."""
        self.shadow = {
            k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average one step towards ``model``'s weights."""
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - decay)
            else:
                s.copy_(v)
        self.updates += 1

    def state_dict(self, like: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights, in ``like``'s dtypes (a state dict ``like`` loads)."""
        live = like.state_dict()
        return {k: self.shadow[k].to(live[k].dtype).clone() for k in live}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from an average saved with :meth:`state_dict` (``--resume``)."""
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"the averaged weights differ in {sorted(missing)[:3]}")
        for k, v in state.items():
            s = self.shadow[k]
            s.copy_(v.to(device=s.device, dtype=s.dtype))

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """``model`` holds the averaged weights inside the block, its own again after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state_dict(model))
        try:
            yield model
        finally:
            model.load_state_dict(live)
