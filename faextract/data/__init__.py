"""The data layer: open -> axes/time -> normalize -> tiles -> torch windows.

Public surface: :func:`open_cube`, :class:`Cube`, :func:`compute_stats`, :func:`normalize`,
:func:`denormalize`, :class:`TileSpec`, :class:`Tiler`, :class:`WindowDataset`.
"""

from faextract.data.cube import Cube, open_cube
from faextract.data.dataset import CubeSource, WindowDataset, make_loader
from faextract.data.normalize import denormalize, normalize
from faextract.data.stats import StatsOptions, compute_stats, load_stats, save_stats
from faextract.data.tiling import Tiler, TileSpec, Untiler

__all__ = [
    "Cube",
    "CubeSource",
    "StatsOptions",
    "TileSpec",
    "Tiler",
    "Untiler",
    "WindowDataset",
    "compute_stats",
    "denormalize",
    "load_stats",
    "make_loader",
    "normalize",
    "open_cube",
    "save_stats",
]
