"""Where the bundled sample data lives, and how relative data paths are resolved.

A relative path in a config is looked up, in order: as given (relative to the working
directory), next to the config file, then in the faextract source tree (where
``sample_data/`` and ``configs/`` live), so the sample configs work from any directory.

The project's top-level folders (``sample_data/``, ``configs/``, ``slurm/``) are read in place
from a checkout or an editable install; a wheel installs them under
``<prefix>/share/faextract/`` (``pip install --user``: the user base), where they are found
when there is no source tree.
"""

from __future__ import annotations

import glob
import os
import site
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_folder(name: str, marker: str) -> Path:
    """One of the project's top-level folders (recognized by a file it holds, ``marker``): in
    the source tree, else where a wheel put it."""
    in_tree = PROJECT_ROOT / name
    if (in_tree / marker).is_file():
        return in_tree
    prefixes = [sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None) or ""]
    for prefix in filter(None, prefixes):
        installed = Path(prefix) / "share" / "faextract" / name
        if (installed / marker).is_file():
            return installed
    return in_tree  # not found: errors name the path a checkout would have


SAMPLE_DIR = shared_folder("sample_data", "sample_cube.nc")
SAMPLE_CUBE = SAMPLE_DIR / "sample_cube.nc"
SAMPLE_CHECKPOINT = SAMPLE_DIR / "sample_model.pt"
#: The bundled compressor (``faextract compress`` without ``--checkpoint``).
SAMPLE_COMPRESSOR = SAMPLE_DIR / "sample_compressor.pt"
CONFIG_DIR = shared_folder("configs", "default.yaml")


def resolve(path: str, config_path: str | os.PathLike | None = None) -> str:
    """Resolve one data path (globs allowed); unresolvable paths are returned unchanged."""
    if os.path.isabs(path) or os.path.exists(path) or glob.glob(path):
        return path
    bases = []
    if config_path is not None:
        bases.append(Path(config_path).resolve().parent)
    bases += [PROJECT_ROOT, SAMPLE_DIR.parent]  # sample_data/... as in the bundled configs
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
