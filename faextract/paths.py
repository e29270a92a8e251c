"""Where the bundled sample data lives, and how relative data paths are resolved.

A relative path in a config is looked up, in order: as given (relative to the working
directory), next to the config file, then in the faextract source tree (where
``sample_data/`` and ``configs/`` live), so the sample configs work from any directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_ROOT / "sample_data"
SAMPLE_CUBE = SAMPLE_DIR / "sample_cube.nc"
SAMPLE_CHECKPOINT = SAMPLE_DIR / "sample_model.pt"
CONFIG_DIR = PROJECT_ROOT / "configs"


def resolve(path: str, config_path: str | os.PathLike | None = None) -> str:
    """Resolve one data path (globs allowed); unresolvable paths are returned unchanged."""
    if os.path.isabs(path) or os.path.exists(path) or glob.glob(path):
        return path
    bases = []
    if config_path is not None:
        bases.append(Path(config_path).resolve().parent)
    bases.append(PROJECT_ROOT)
    for base in bases:
        candidate = base / path
        if candidate.exists() or glob.glob(str(candidate)):
            return str(candidate)
    return path


def resolve_config(path: str) -> str:
    """A config path, or the name of a bundled config (``sample`` -> configs/sample.yaml)."""
    if os.path.exists(path):
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if candidate.exists():
            return str(candidate)
    return path
