"""faextract: learned, physically meaningful features from multivariate climate data cubes.

Data flows one way: ``open_cube -> normalize -> tiles -> model -> untile -> store``.
The public entry points are re-exported here; the CLI (:mod:`faextract.cli`) is a thin
shell over them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open_cube", "open_embeddings", "FaextractError"]

from faextract.errors import FaextractError


def __getattr__(name: str):
    # Lazy so that `import faextract` (and `faextract --help`) does not pay for torch/xarray.
    if name == "open_cube":
        from faextract.data.cube import open_cube

        return open_cube
    if name == "open_embeddings":
        from faextract.store import open_embeddings

        return open_embeddings
    raise AttributeError(f"module 'faextract' has no attribute {name!r}")
