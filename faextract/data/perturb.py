"""Perturbed inputs for robustness checks (``faextract embed --perturb``).

- ``noise=S``: Gaussian noise of ``S`` standard deviations of each channel (the standard
  deviation the model normalizes by), added to every valid cell;
- ``drop=P``: a fraction ``P`` of the valid cells marked missing (as land or gaps are).

The draw at each time step depends only on ``(seed, step)``: every window that sees a step
sees the same perturbation of it, and a resumed or sharded run perturbs exactly as one
uninterrupted run does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faextract.errors import FaextractError


@dataclass(frozen=True)
class Perturbation:
    noise: float = 0.0
    drop: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Perturbation | None:
        """``noise=0.05``, ``drop=0.1``, or both with an optional ``seed=N``, comma-separated."""
        if not text:
            return None
        values: dict[str, float] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in ("noise", "drop", "seed"):
                raise FaextractError(
                    f"--perturb: expected noise=S, drop=P or seed=N (comma-separated), got {part!r}"
                )
            try:
                values[key] = float(value)
            except ValueError:
                raise FaextractError(f"--perturb: {key} must be a number, got {value!r}") from None
        noise, drop = values.get("noise", 0.0), values.get("drop", 0.0)
        if not (np.isfinite(noise) and noise >= 0):
            raise FaextractError(f"--perturb: noise must be >= 0, got {noise}")
        if not (0 <= drop < 1):
            raise FaextractError(f"--perturb: drop must be in [0, 1), got {drop}")
        seed = values.get("seed", 0.0)
        if seed != int(seed) or seed < 0:
            raise FaextractError(f"--perturb: seed must be a whole number >= 0, got {seed}")
        if noise == 0 and drop == 0:
            raise FaextractError("--perturb: nothing to do (noise and drop are both 0)")
        return cls(noise, drop, int(seed))

    def describe(self) -> str:
        parts = [f"noise={self.noise:g}"] if self.noise else []
        parts += [f"drop={self.drop:g}"] if self.drop else []
        return ",".join(parts + [f"seed={self.seed}"])

    def apply(self, block: np.ndarray, t0: int) -> None:
        """Perturb a normalized block ``(T, C, H, W)`` of steps ``t0 ...`` in place."""
        for i in range(block.shape[0]):
            rng = np.random.default_rng([self.seed, t0 + i])
            step = block[i]
            if self.drop:
                step[rng.random(step.shape) < self.drop] = np.nan
            if self.noise:
                step += (self.noise * rng.standard_normal(step.shape)).astype(step.dtype)
