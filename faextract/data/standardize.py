"""One opened file made standard: axes found and renamed ``time``, ``level``, ``lat``, ``lon``
(original names kept), time decoded in its calendar, a regular grid described by 2-D
coordinates reduced to 1-D, levels matched in any unit, latitudes north to south, and the
variables checked; what :class:`~faextract.data.cube.Cube` is built from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from faextract.data.axes import classify, detect_axes
from faextract.data.selection import EXPVER, apply_select, choices
from faextract.data.time import (
    check_monotonic,
    decode_absolute,
    decode_text,
    decode_time,
    is_absolute,
    is_text,
)
from faextract.errors import DataError, MissingVariableError


def data_variables(ds: xr.Dataset) -> list[str]:
    """Gridded data variables: at least 3 dims, not bounds or other auxiliary arrays."""
    aux = set()
    for var in ds.variables.values():
        for key in ("bounds", "climatology"):
            if key in var.attrs:
                aux.add(var.attrs[key])
    return [name for name, da in ds.data_vars.items() if da.ndim >= 3 and name not in aux]


def _geographic_2d(ds: xr.Dataset, dims: set[str]) -> dict[str, str]:
    """2-D variables over the data's dims that hold latitude or longitude: name -> "lat"/"lon"."""
    found = {}
    for name, var in ds.variables.items():
        if var.ndim != 2 or not set(var.dims) <= dims:
            continue
        std = str(var.attrs.get("standard_name", "")).lower()
        units = str(var.attrs.get("units", "")).lower()
        if std == "latitude" or units in ("degrees_north", "degree_north"):
            found[name] = "lat"
        elif std == "longitude" or units in ("degrees_east", "degree_east"):
            found[name] = "lon"
    return found


def _rectilinear(ds: xr.Dataset, source: str, dims: set[str]) -> xr.Dataset:
    """Reduce 2-D latitude/longitude to 1-D coordinates where the grid is in fact regular.

    Some tools write ``lat(y, x)`` and ``lon(y, x)`` even for a plain lat/lon grid (latitude
    constant along x, longitude along y): those become the coordinates of ``y`` and ``x``.
    Anything else is a curvilinear grid, which is an error with a hint to regrid.
    """
    for name, kind in _geographic_2d(ds, dims).items():
        values = np.asarray(ds[name].values, dtype=float)
        varying = [
            axis
            for axis in (0, 1)
            if not np.allclose(values, np.take(values, [0], axis=axis), atol=1e-4, equal_nan=True)
        ]
        if len(varying) != 1:
            raise DataError(
                f"{source}: curvilinear grid ({name!r} has dims {ds[name].dims}); only regular "
                "lat/lon grids are supported: regrid first (e.g. with xESMF or CDO remapbil)"
            )
        dim = ds[name].dims[varying[0]]
        line = np.take(values, 0, axis=1 - varying[0])
        attrs = dict(ds[name].attrs, units="degrees_north" if kind == "lat" else "degrees_east")
        attrs["standard_name"] = "latitude" if kind == "lat" else "longitude"
        ds = ds.drop_vars(name).assign_coords({dim: (dim, line, attrs)})
    return ds


def standardize(
    ds: xr.Dataset,
    source: str,
    *,
    variables: Sequence[str] | None,
    levels: Sequence[float] | None,
    dims: Mapping[str, str],
    sort_time: bool,
    select: Mapping[str, str] | None = None,
) -> tuple[xr.Dataset, dict[str, str], list[str]]:
    """``ds`` with standard axes, its variables on them, time decoded and sorted, levels
    chosen, latitudes north to south; returns ``(ds, {axis: original dim}, variables kept)``."""
    chosen = _chosen_variables(ds, source, variables)
    all_dims: list[str] = []
    for v in chosen:
        all_dims.extend(d for d in ds[v].dims if d not in all_dims)
    ds = _rectilinear(ds, source, set(all_dims))
    axes = detect_axes(ds, all_dims, dims, source)
    for need in ("time", "lat", "lon"):
        if need not in axes:
            raise DataError(
                f"{source}: no {need} axis among dimensions {', '.join(all_dims)}; "
                f"name it with --dims {need}=DIM"
            )
    ds = _renamed(ds, axes, chosen, source, select)
    kept = _gridded_variables(ds, source, axes, chosen, explicit=bool(variables))
    ds = ds[kept]
    for axis in ("time", "lat", "lon"):
        if ds.sizes[axis] == 0:
            raise DataError(f"{source}: the {axis} axis {axes[axis][0]!r} is empty")
    ds = _time_decoded(ds, source, axes["time"][0], sort_time)
    if levels is not None:
        if "level" not in ds.dims:
            raise DataError(f"{source}: --levels given but no variable has a vertical axis")
        ds = ds.isel(level=_level_positions(ds["level"], levels, source))
    ds = _oriented(ds, source, axes["lat"][0])
    return ds, {a: d for a, (d, _w) in axes.items()}, kept


def _chosen_variables(ds: xr.Dataset, source: str, variables: Sequence[str] | None) -> list[str]:
    candidates = data_variables(ds)
    if not candidates:
        static = [f"{n}({', '.join(map(str, da.dims))})" for n, da in ds.data_vars.items() if da.ndim == 2]
        if static:
            raise DataError(
                f"{source}: no time dimension: its variables are static maps "
                f"({', '.join(static[:3])}); faextract needs a time axis"
            )
        raise DataError(f"{source}: no gridded data variable (need dims like time, lat, lon)")
    if not variables:
        return candidates
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise MissingVariableError(source, missing[0], candidates)
    return list(variables)


def _renamed(ds: xr.Dataset, axes: dict, chosen: list[str], source: str, select) -> xr.Dataset:
    """The chosen variables with the detected dims renamed to the standard axes, ``select``
    applied, and only the axes' coordinates kept (original names in their attributes)."""
    rename = {dim: axis for axis, (dim, _why) in axes.items() if dim != axis}
    # A non-dim variable already called like a target name would clash with the rename.
    clash = [t for t in rename.values() if t in ds.variables and t not in rename]
    ds = ds.drop_vars(clash)
    ds = ds.rename(rename)
    ds = ds[chosen]
    grid = {dim: axis for axis, (dim, _why) in axes.items()} | {axis: axis for axis in axes}
    ds = apply_select(ds, select or {}, source, grid)
    # Only the axes' own coordinates travel on (ERA5's expver(time) strings, scalar height or
    # ensemble numbers would be concatenated across files and read for nothing).
    ds = ds.reset_coords(drop=True)
    for axis, (dim, why) in axes.items():
        if axis not in ds.coords:
            ds = ds.assign_coords({axis: np.arange(ds.sizes[axis])})
        ds[axis].attrs["original_name"] = dim
        ds[axis].attrs["detected_by"] = why
    return ds


def _gridded_variables(
    ds: xr.Dataset, source: str, axes: dict, chosen: list[str], explicit: bool
) -> list[str]:
    """The chosen variables on (time, [level,] lat, lon); one with another dimension is an
    error, one lacking an axis is dropped (an error if the user named it)."""
    kept = []
    for v in chosen:
        extra = [d for d in ds[v].dims if d not in ("time", "level", "lat", "lon", EXPVER)]
        kinds = {d: classify(d, ds[d])[0] for d in extra if d in ds.variables}
        other_grid = [(d, axis) for d, axis in kinds.items() if axis in ("lat", "lon")]
        if other_grid:
            dim, axis = other_grid[0]
            raise DataError(
                f"{source}: variable {v!r} is on another {axis} axis ({dim!r}) than "
                f"the grid ({axes[axis][0]!r}); keep the variables of one grid with --variables"
            )
        if extra:
            raise DataError(
                f"{source}: variable {v!r} has extra dimension(s) {', '.join(extra)} "
                f"(dims {ds[v].dims}); keep one value with --select {extra[0]}=VALUE "
                f"({extra[0]} has {choices(ds, extra[0])})"
            )
        lacking = [d for d in ("time", "lat", "lon") if d not in ds[v].dims]
        if lacking:
            if explicit:
                raise DataError(f"{source}: variable {v!r} lacks dimension(s) {', '.join(lacking)}")
            continue
        kept.append(v)
    if not kept:
        raise DataError(f"{source}: no variable has time, lat and lon dimensions")
    return kept


def _time_decoded(ds: xr.Dataset, source: str, name: str, sort_time: bool) -> xr.Dataset:
    """Time decoded here (reference year 0 and every CF calendar), checked increasing or
    sorted on request."""
    try:
        decoded = _decoded_time(ds["time"], name)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    if decoded is not None:
        values, attrs, encoding = decoded
        ds = ds.assign_coords(time=("time", values, attrs))
        ds["time"].encoding.update(encoding)
    order = check_monotonic(ds["time"], source, sort_time)
    return ds if order is None else ds.isel(time=order)


def _oriented(ds: xr.Dataset, source: str, lat_name: str) -> xr.Dataset:
    """Latitudes checked (finite, in range, strictly monotonic) and turned north to south;
    longitudes made increasing (unwrapped across the dateline)."""
    lat = ds["lat"].values.astype(float)
    if not np.isfinite(lat).all():
        raise DataError(f"{source}: latitude {lat_name!r} has missing (NaN) values")
    if lat.size and (np.nanmin(lat) < -90.0001 or np.nanmax(lat) > 90.0001):
        raise DataError(
            f"{source}: latitudes must be in [-90, 90], got [{np.nanmin(lat):g}, {np.nanmax(lat):g}]"
        )
    step = np.diff(lat)
    if lat.size > 1 and not (np.all(step > 0) or np.all(step < 0)):
        i = int(np.nonzero(step == 0)[0][0]) if np.any(step == 0) else None
        if i is not None:
            raise DataError(f"{source}: latitude {lat[i]:g} appears twice in {lat_name!r}")
        bad = int(np.nonzero(np.sign(step) != np.sign(step[0]))[0][0])
        raise DataError(
            f"{source}: latitudes in {lat_name!r} are not sorted ({lat[bad]:g}, then "
            f"{lat[bad + 1]:g}, then {lat[bad + 2]:g}); sort the file first (xarray sortby)"
            if bad + 2 < lat.size
            else f"{source}: latitudes in {lat_name!r} are not sorted; sort the file first"
        )
    if lat.size > 1 and step[0] > 0:
        # One canonical orientation, north to south (as ERA5): the same field stored south to
        # north must give the same embedding, and convolutions are not mirror-symmetric.
        ds = ds.isel(lat=slice(None, None, -1))
    lon = ds["lon"].values.astype(float)
    if lon.size > 1 and not (np.all(np.diff(lon) > 0) or np.all(np.diff(lon) < 0)):
        unwrapped = np.unwrap(lon, period=360.0)
        if not np.all(np.diff(unwrapped) > 0):
            raise DataError(f"{source}: longitudes are not monotonic, even modulo 360")
        attrs = dict(ds["lon"].attrs)
        ds = ds.assign_coords(lon=("lon", unwrapped, attrs))
    return ds


def _decoded_time(t: xr.DataArray, name: str) -> tuple[np.ndarray, dict, dict] | None:
    """The time coordinate decoded: ``(values, attrs, encoding for outputs)``, or None when it
    needs nothing (already dates). Numbers with CF or CDO units, or ISO 8601 text."""
    if is_text(t.values):
        return decode_text(t.values), dict(t.attrs), {}
    if not np.issubdtype(t.dtype, np.number):
        return None
    units = t.attrs.get("units", "")
    calendar = str(t.attrs.get("calendar", "standard")).lower()
    if is_absolute(units):
        values, units = decode_absolute(t.values, units, calendar)
    elif "since" in units:
        values = decode_time(t.values, units, calendar)
    else:
        raise DataError(f"time axis {name!r} has no CF units ('<unit> since <date>')")
    attrs = {k: v for k, v in t.attrs.items() if k not in ("units", "calendar")}
    return values, attrs, {"units": units, "calendar": calendar}


#: Pressure units and their size in Pa, so ``--levels 500,850`` finds 50000 Pa and 85000 Pa.
_PRESSURE_PA = {
    "pa": 1.0,
    "hpa": 100.0,
    "mbar": 100.0,
    "millibar": 100.0,
    "millibars": 100.0,
    "mb": 100.0,
    "kpa": 1000.0,
}


def _level_positions(level: xr.DataArray, wanted: Sequence[float], source: str) -> list[int]:
    """Positions of ``wanted`` on the level axis: exact values, or (on a pressure axis) the
    same pressure given in hPa, the unit people name pressure levels in."""
    have = level.values.astype(float)
    units = str(level.attrs.get("units", "")).strip().lower()
    scale = _PRESSURE_PA.get(units)
    positions = []
    for lev in wanted:
        hit = np.nonzero(np.isclose(have, float(lev)))[0]
        if hit.size == 0 and scale is not None:  # hPa given, axis in `units`
            hit = np.nonzero(np.isclose(have * scale, float(lev) * 100.0))[0]
        if hit.size == 0:
            unit = f" {level.attrs['units']}" if units else ""
            raise DataError(
                f"{source}: level {lev:g} not found; available: "
                f"{', '.join(f'{x:g}' for x in have)}{unit}"
            )
        positions.append(int(hit[0]))
    return positions


def is_periodic(lon: np.ndarray) -> bool:
    """True when a regular longitude axis wraps the globe (n * dlon == 360)."""
    if lon.size < 3:
        return False
    d = np.diff(lon.astype(float))
    step = float(np.median(np.abs(d)))
    if step == 0 or np.max(np.abs(np.abs(d) - step)) > 1e-3 * step:
        return False
    return abs(lon.size * step - 360.0) < 1e-3 * step * lon.size
