"""What is in a cube: the facts ``faextract inspect`` prints, from metadata and a small sample.

Reads metadata plus at most three time steps (and three levels) per variable, so it answers in
seconds even on a large store.
"""

from __future__ import annotations

import os

import numpy as np

from faextract.data.cube import Cube
from faextract.data.selection import fold_expver
from faextract.data.sources import is_url
from faextract.data.time import time_gaps, time_step


def _size_on_disk(path: str) -> int:
    if is_url(path):
        return 0  # remote: not worth listing a bucket for (reported as None)
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, f))
            for root, _d, files in os.walk(path)
            for f in files
        )
    return os.path.getsize(path)


def describe(cube: Cube) -> dict:
    """A JSON-serializable description of ``cube``."""
    ds = cube.dataset
    nt = ds.sizes["time"]
    sample = sorted({0, nt // 2, nt - 1})
    variables = []
    for name in cube.variables:
        da = ds[name]
        probe = da.isel(time=sample)
        if "level" in da.dims and da.sizes["level"] > 3:  # 37 levels x 3 steps: too much to read
            nl = da.sizes["level"]
            probe = probe.isel(level=sorted({0, nl // 2, nl - 1}))
        values = fold_expver(probe).values
        variables.append(
            {
                "name": name,
                "long_name": str(da.attrs.get("long_name", "")),
                "units": str(da.attrs.get("units", "")),
                "dims": [str(ds[d].attrs.get("original_name", d)) for d in da.dims],
                "shape": [int(s) for s in da.shape],
                "dtype": str(da.encoding.get("dtype", da.dtype)),
                "packed": "scale_factor" in da.encoding or "add_offset" in da.encoding,
                "nan_fraction_sample": float(np.mean(~np.isfinite(values))),
                "chunks": [int(c[0]) for c in da.chunks] if da.chunks else None,
            }
        )
    time = ds["time"]
    grid = cube.grid()
    axes = {
        axis: {
            "name": name,
            "detected_by": str(ds[axis].attrs.get("detected_by", "")),
            "size": int(ds.sizes[axis]),
        }
        for axis, name in cube.axes.items()
    }
    return {
        "sources": list(cube.sources),
        "size_on_disk_bytes": (
            None
            if all(is_url(p) for p in cube.sources)
            else int(sum(_size_on_disk(p) for p in cube.sources))
        ),
        "variables": variables,
        "channels": list(cube.channels),
        "axes": axes,
        "time": {
            "calendar": cube.calendar,
            "units": str(time.encoding.get("units", "")),
            "start": str(time.values[0]),
            "end": str(time.values[-1]),
            "steps": int(nt),
            "step": time_step(time),
            "gaps": time_gaps(time, cube.calendar),
        },
        "grid": grid,
        "levels": [float(v) for v in ds["level"].values] if "level" in ds.dims else None,
    }
