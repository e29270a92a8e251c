"""Dimensions that are not part of the grid: choose one value, or combine ERA5's ``expver``.

Real files carry dimensions besides time, level, latitude and longitude: ensemble members
(``number``, ``member``, ``realization``), ERA5's experiment version, a forecast step. The
model needs one field per channel, so each such dimension must be reduced first:

- ``--select member=3`` (``data.select: {member: 3}``) keeps the step whose coordinate value
  is ``3`` (a number, a string or a date, compared as the coordinate's type); a dimension
  without a coordinate variable is indexed by position.
- ERA5 downloads that straddle the release of final data hold ``expver`` (1 = ERA5,
  5 = ERA5T): each time step is valid in one of them and NaN in the other. Unless the user
  selects one, they are combined as ECMWF recommends: the first valid value along ``expver``
  in the file's order (final data before preliminary).

Everything stays lazy: selection is an ``isel``; the ``expver`` combination happens in
:func:`fold_expver`, on dask arrays or on the time block actually read.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from faextract.data.axes import parse_pairs
from faextract.errors import DataError

#: ERA5's experiment-version dimension (CDS downloads mixing ERA5 and ERA5T).
EXPVER = "expver"


def parse_select(spec: str | Mapping[str, object] | None) -> dict[str, str]:
    """``"member=3,expver=1"`` (or a mapping) -> ``{"member": "3", "expver": "1"}``."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    # Empty parts ("member=3," or "a=1,,b=2") are skipped.
    return parse_pairs(spec, "--select", "DIM=VALUE pairs like 'member=3'", skip_empty=True)


def _position(ds: xr.Dataset, dim: str, value: str, source: str) -> int:
    """Index along ``dim`` of the coordinate value written as ``value``."""
    if dim not in ds.variables:  # a bare dimension: a position
        try:
            index = int(value)
        except ValueError:
            raise DataError(
                f"{source}: --select {dim}={value}: {dim!r} has no coordinate values, "
                f"so give a position 0..{ds.sizes[dim] - 1}"
            ) from None
        if not 0 <= index < ds.sizes[dim]:
            raise DataError(
                f"{source}: --select {dim}={value}: position out of range 0..{ds.sizes[dim] - 1}"
            )
        return index
    have = _values(ds, dim)
    hits = np.array([], dtype=int)
    if have.dtype == object:  # cftime dates: compare as written, e.g. 2001-01-01 00:00:00
        try:
            wanted = pd.Timestamp(value)
        except ValueError:
            wanted = None
        if wanted is not None:
            hits = np.nonzero([_fields(t) == _fields(wanted) for t in have])[0]
    elif have.dtype.kind in "iuf":
        try:
            hits = np.nonzero(np.isclose(have.astype(float), float(value)))[0]
        except ValueError:
            pass
    elif have.dtype.kind == "M":  # a date, e.g. a forecast's initialization time
        try:
            hits = np.nonzero(have == np.datetime64(value).astype(have.dtype))[0]
        except ValueError:
            pass
    else:
        hits = np.nonzero(np.char.strip(have.astype(str)) == value)[0]
    if hits.size == 0:
        raise DataError(
            f"{source}: --select {dim}={value}: no such value; {dim} has {choices(ds, dim)}"
        )
    return int(hits[0])


def _fields(t) -> tuple[int, ...]:
    """A date's calendar fields, to compare a cftime date with a parsed one."""
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def _values(ds: xr.Dataset, dim: str) -> np.ndarray:
    """A coordinate's values, dates decoded (files are opened with times left numeric)."""
    var = ds[dim]
    units = str(var.attrs.get("units", ""))
    if " since " in units and np.issubdtype(var.dtype, np.number):
        from faextract.data.time import decode_time

        return decode_time(var.values, units, str(var.attrs.get("calendar", "standard")))
    return np.asarray(var.values)


def choices(ds: xr.Dataset, dim: str, limit: int = 12) -> str:
    """What ``--select`` can name along ``dim``: its coordinate values, or positions."""
    if dim not in ds.variables:
        return f"positions 0..{ds.sizes[dim] - 1}"
    have = _values(ds, dim)
    if have.dtype.kind == "M":
        have = np.datetime_as_string(have, unit="s")
    return ", ".join(str(v) for v in have[:limit]) + (", ..." if have.size > limit else "")


def apply_select(
    ds: xr.Dataset, select: Mapping[str, str], source: str, grid: Mapping[str, str]
) -> xr.Dataset:
    """Keep one step of every dimension named in ``select`` (dropped from the dataset).

    ``grid`` maps the file's grid dimensions to their axes (``{"plev": "level", ...}``):
    those are not selectable here.
    """
    for dim, value in select.items():
        axis = grid.get(dim)
        if axis == "level":
            raise DataError(
                f"{source}: --select {dim}={value}: {dim!r} is the vertical axis; "
                f"keep levels with --levels {value}"
            )
        if axis is not None:
            raise DataError(
                f"{source}: --select {dim}={value}: {dim!r} is the {axis} axis of the grid, "
                "which is windowed, not selected"
            )
        if dim not in ds.dims:
            raise DataError(
                f"{source}: --select {dim}={value}: no dimension {dim!r}; "
                f"dimensions are {', '.join(map(str, ds.dims))}"
            )
        ds = ds.isel({dim: _position(ds, dim, value, source)}, drop=True)
    return ds


def fold_expver(da: xr.DataArray) -> xr.DataArray:
    """``da`` without its ``expver`` axis: at each point the first valid value along it.

    Lazy on a dask-backed array; on a lazily indexed file array it reads what ``da`` spans
    (callers slice time first).
    """
    if EXPVER not in da.dims:
        return da
    out = da.isel({EXPVER: 0}, drop=True)
    for i in range(1, da.sizes[EXPVER]):
        out = out.fillna(da.isel({EXPVER: i}, drop=True))
    out.attrs = dict(da.attrs)
    return out
