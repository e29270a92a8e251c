"""Many files as one cube: files grouped by the variables they hold, each group joined along
time, groups merged on a common time axis, and their grids checked equal."""

from __future__ import annotations

import numpy as np
import xarray as xr

from faextract.data.standardize import data_variables, standardize
from faextract.data.time import (
    check_monotonic,
)
from faextract.errors import DataError, MissingVariableError


def group_by_variables(opened, variables):
    """Files grouped by the variables they hold (one group per variable set, in the order
    first met): a group is one time series split across files, the groups are merged.
    With ``variables``, files holding none of them are left out."""
    groups: dict[tuple[str, ...], list] = {}
    available: list[str] = []
    for path, raw in opened:
        have = data_variables(raw)
        available += [v for v in have if v not in available]
        names = tuple(v for v in variables if v in have) if variables else None
        if names == ():
            continue
        key = names if names is not None else tuple(have)
        groups.setdefault(key, []).append((path, raw))
    if variables:
        found = {v for key in groups for v in key}
        missing = [v for v in variables if v not in found]
        if missing:
            raise MissingVariableError(opened[0][0], missing[0], available)
    if len(groups) > 1:
        seen: dict[str, str] = {}
        for key, members in groups.items():
            for v in key:
                if v in seen:
                    raise DataError(
                        f"{members[0][0]}: variable {v!r} is also in {seen[v]}, which holds "
                        "other variables; give files with the same variables, or one variable "
                        "per file, or choose variables with --variables"
                    )
                seen[v] = members[0][0]
    return [(list(key) if variables else None, members) for key, members in groups.items()]


def open_group(members, variables, levels, overrides, sort_time, time_chunk, select):
    """Files with the same variables, concatenated in time -> (dataset, axes, kept, files)."""
    parts = []
    axes: dict[str, str] = {}
    kept: list[str] = []
    for path, raw in members:
        ds, axes, kept_here = standardize(
            raw,
            path,
            variables=variables,
            levels=levels,
            dims=overrides,
            sort_time=sort_time,
            select=select,
        )
        if parts:
            first_ds, first_path, _ = parts[0]
            _check_same_grid(first_ds, first_path, ds, path, kept, kept_here)
        else:
            kept = kept_here
        # Chunk each file's lazily indexed variables (not the file's own chunks): a dask task
        # then reads just its time slice through the backend, whose chunk cache decompresses
        # each on-disk chunk once. Chunking after opening with the on-disk chunks instead makes
        # every task depend on whole on-disk chunks, e.g. the full time axis of a file written
        # with one chunk per variable, read again for every block.
        parts.append((ds.chunk(_chunks(ds, time_chunk)), path, ds))
    if len(parts) == 1:
        ds = parts[0][0]
        files: tuple = ((0, parts[0][2]),)
    else:
        parts.sort(key=lambda p: p[0]["time"].values[0])
        starts = np.cumsum([0] + [p[0].sizes["time"] for p in parts[:-1]])
        files = tuple((int(s), p[2]) for s, p in zip(starts, parts, strict=True))
        for (a, pa, _), (b, pb, _) in zip(parts, parts[1:], strict=False):
            common = np.intersect1d(a["time"].values, b["time"].values)
            if common.size:
                raise DataError(f"time {common[0]} is duplicated: it is in both {pa} and {pb}")
        encoding = dict(parts[0][0]["time"].encoding)
        ds = xr.concat(
            [p[0] for p in parts],
            dim="time",
            data_vars="minimal",
            coords="minimal",
            compat="override",
            join="override",
        )
        ds["time"].encoding.update(encoding)
        order = check_monotonic(ds["time"], "combined files", sort_time)
        if order is not None:
            ds = ds.isel(time=order)
            files = ()  # files interleave in time: read through dask
    ds = ds.chunk(_chunks(ds, time_chunk))
    for name in ds.data_vars:
        ds[name].encoding.pop("chunks", None)
        ds[name].encoding.pop("preferred_chunks", None)
    return ds, axes, kept, files


def merge_groups(parts, members):
    """Merge variable groups (e.g. one variable per file) that share grid and time steps."""
    (first, axes, _, _), first_path = parts[0], members[0][0][0]
    kept: list[str] = []
    files: list | None = []
    levelled = None
    for (ds, _axes, kept_here, group_files), group in zip(parts, members, strict=True):
        path = group[0][0]
        _check_same_grid(first, first_path, ds, path, [], [], merging=True)
        if "level" in ds.dims:  # variables with levels share one level axis
            if levelled is None:
                levelled = (ds, path)
            _check_same_grid(levelled[0], levelled[1], ds, path, [], [], merging=True)
        a, b = first["time"].values, ds["time"].values
        if a.shape != b.shape or not np.all(a == b):
            raise DataError(
                f"{path}: its time steps ({b.size}, {b[0]} .. {b[-1]}) differ from {first_path}'s "
                f"({a.size}, {a[0]} .. {a[-1]}); files with different variables must cover the "
                "same times"
            )
        kept += kept_here
        # Read lazily only if every group can be (no group had to be re-sorted).
        files = files + list(group_files) if files is not None and group_files else None
    ds = xr.merge(
        [p[0] for p in parts], compat="override", join="override", combine_attrs="override"
    )
    ds["time"].encoding.update(parts[0][0]["time"].encoding)
    return ds, axes, kept, tuple(sorted(files, key=lambda f: f[0])) if files else ()


def _chunks(ds: xr.Dataset, time_chunk: int) -> dict[str, int]:
    chunks = {"time": max(1, int(time_chunk)), "lat": -1, "lon": -1}
    if "level" in ds.dims:
        chunks["level"] = -1
    return chunks


def _check_same_grid(
    a: xr.Dataset, a_path: str, b: xr.Dataset, b_path: str, va, vb, *, merging: bool = False
) -> None:
    """Same variables (unless ``merging`` different ones) on the same lat, lon and levels;
    when merging, only one of the two needs a vertical axis."""
    if list(va) != list(vb):
        raise DataError(f"{b_path}: variables {list(vb)} differ from {a_path}: {list(va)}")
    for axis in ("lat", "lon", "level"):
        if (axis in a.dims) != (axis in b.dims):
            if merging and axis == "level":
                continue
            raise DataError(f"{b_path}: has {axis} axis mismatch with {a_path}")
        if axis not in a.dims:
            continue
        x, y = a[axis].values, b[axis].values
        if x.shape != y.shape or not np.allclose(x.astype(float), y.astype(float), atol=1e-6):
            raise DataError(
                f"grids differ: {a_path} has {axis} of size {x.size} "
                f"[{float(x.min()):g}..{float(x.max()):g}], {b_path} has size {y.size} "
                f"[{float(y.min()):g}..{float(y.max()):g}]"
            )
