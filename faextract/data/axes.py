"""Detect which dimension of a climate file is time, level, latitude and longitude.

Real files name their axes anything (``COADSX``, ``FNOCY``, ``ETOPO20X1_1081``, ``TIME``,
``nav_lat``), so detection relies on metadata first, in this order of trust:

1. CF ``axis`` attribute (``T``, ``Z``, ``Y``, ``X``);
2. CF ``standard_name`` (``time``, ``latitude``, ``air_pressure``, ...);
3. units (``degrees_north``, ``days since ...``, ``hPa``, ...), and ``positive`` for levels;
4. cf_xarray's name-based guess (``.cf.guess_coord_axis()``), then a conservative name match.

Two dimensions claiming the same axis is an error naming both; the user resolves it with an
explicit mapping (``--dims time=T,lat=Y,lon=X``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import xarray as xr

from faextract.errors import DataError

STANDARD = ("time", "level", "lat", "lon")
_CF_AXIS = {"T": "time", "Z": "level", "Y": "lat", "X": "lon"}
_STANDARD_NAMES = {
    "time": {"time"},
    "lat": {"latitude", "grid_latitude"},
    "lon": {"longitude", "grid_longitude"},
    "level": {
        "air_pressure",
        "altitude",
        "height",
        "depth",
        "model_level_number",
        "atmosphere_hybrid_sigma_pressure_coordinate",
        "atmosphere_sigma_coordinate",
        "atmosphere_ln_pressure_coordinate",
        "geopotential_height",
    },
}
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_LEVEL_UNITS = {"pa", "hpa", "mbar", "millibar", "millibars", "bar", "kpa", "level", "sigma"}
_NAME_PATTERNS = {
    "time": re.compile(r"^(time|t|times|date|valid_time|time_counter)$", re.I),
    "lat": re.compile(r"^(lat|lats|latitude|nav_lat|y|yt|yu|.*lat.*)$", re.I),
    "lon": re.compile(r"^(lon|lons|long|longitude|nav_lon|x|xt|xu|.*lon.*)$", re.I),
    "level": re.compile(
        r"^(lev|level|levels|plev|pressure|isobaric.*|pressure_level|depth|height|z|alt|altitude)$",
        re.I,
    ),
}


def parse_pairs(text: str, option: str, usage: str, skip_empty: bool = False) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` for an option such as ``--dims``; a part that
    is not ``KEY=VALUE`` is an error quoting ``usage`` (empty parts are skipped if asked)."""
    items: dict[str, str] = {}
    for part in str(text).split(","):
        if skip_empty and not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"{option}: expected {usage}, got {part!r}")
        items[key.strip()] = value.strip()
    return items


def parse_dims(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``"time=T,lat=Y,lon=X"`` into ``{"time": "T", "lat": "Y", "lon": "X"}``."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = dict(spec)
    else:
        items = parse_pairs(spec, "--dims", "NAME=DIM pairs like 'time=T,lat=Y'")
    unknown = sorted(set(items) - set(STANDARD))
    if unknown:
        raise DataError(
            f"--dims: unknown axis {unknown[0]!r}; expected one of {', '.join(STANDARD)}"
        )
    seen: dict[str, str] = {}
    for axis, dim in items.items():
        if dim in seen:
            raise DataError(f"--dims: {seen[dim]} and {axis} both name dimension {dim!r}")
        seen[dim] = axis
    return items


def _attr(var: xr.Variable | xr.DataArray, key: str) -> str:
    value = var.attrs.get(key, var.encoding.get(key, ""))
    return str(value).strip() if value is not None else ""


def classify(name: str, var: xr.DataArray | xr.Variable) -> tuple[str | None, str]:
    """Classify one 1-D coordinate: ``(axis or None, the evidence)`` from metadata alone."""
    axis = _attr(var, "axis").upper()
    if axis in _CF_AXIS:
        return _CF_AXIS[axis], f"axis={axis}"
    std = _attr(var, "standard_name").lower()
    for key, names in _STANDARD_NAMES.items():
        if std in names:
            return key, f"standard_name={std}"
    units = _attr(var, "units").lower().replace(" ", "")
    if " since " in _attr(var, "units").lower() or "since" in units:
        return "time", f"units={_attr(var, 'units')}"
    if units in _LAT_UNITS:
        return "lat", f"units={units}"
    if units in _LON_UNITS:
        return "lon", f"units={units}"
    if _attr(var, "positive").lower() in ("up", "down"):
        return "level", f"positive={_attr(var, 'positive')}"
    if units in _LEVEL_UNITS:
        return "level", f"units={units}"
    return None, ""


def _cf_xarray_guess(ds: xr.Dataset, dims: list[str]) -> dict[str, str]:
    """Axes cf_xarray infers from names, for dims that carry no usable metadata."""
    try:
        import cf_xarray  # noqa: F401  (registers the .cf accessor)
    except ImportError:  # pragma: no cover - cf_xarray is a dependency
        return {}
    coords = {d: ds[d] for d in dims if d in ds.variables}
    if not coords:
        return {}
    probe = xr.Dataset(coords={d: (d, coords[d].values[:2]) for d in coords})
    for d in coords:
        probe[d].attrs = dict(ds[d].attrs)
    try:
        guessed = probe.cf.guess_coord_axis()
    except Exception:  # noqa: BLE001 - a guess that fails is no guess
        return {}
    out = {}
    for d in coords:
        ax = guessed[d].attrs.get("axis")
        if ax in _CF_AXIS:
            out[d] = _CF_AXIS[ax]
    return out


def _rank(evidence: str) -> int:
    """How strong the evidence for an axis is: 0 is strongest (see the module docstring)."""
    for rank, prefix in enumerate(("axis=", "standard_name=", "units=")):
        if evidence.startswith(prefix):
            return rank
    return 2 if evidence.startswith("positive=") else 3


def detect_axes(
    ds: xr.Dataset, dims: list[str], overrides: Mapping[str, str] | None = None, source: str = ""
) -> dict[str, tuple[str, str]]:
    """Map standard axis -> (file dim name, evidence) for ``dims``.

    ``overrides`` maps standard axis -> file dim and wins over detection. Raises
    :class:`DataError` when two dims claim one axis, naming both and how each was detected.
    """
    overrides = dict(overrides or {})
    where = f"{source}: " if source else ""
    for axis, dim in overrides.items():
        if dim not in dims:
            raise DataError(
                f"{where}--dims {axis}={dim}: no dimension {dim!r}; dimensions are {', '.join(dims)}"
            )
    found: dict[str, list[tuple[str, str]]] = {}
    taken = set(overrides.values())
    undecided = []
    for dim in dims:
        if dim in taken:
            continue
        axis, why = classify(dim, ds[dim]) if dim in ds.variables else (None, "")
        if axis is None:
            undecided.append(dim)
        else:
            found.setdefault(axis, []).append((dim, why))
    guessed = _cf_xarray_guess(ds, undecided)
    for dim in undecided:
        axis = guessed.get(dim)
        why = "cf_xarray name guess"
        if axis is None:
            for key, pattern in _NAME_PATTERNS.items():
                if pattern.match(dim):
                    axis, why = key, "name"
                    break
        if axis is not None and axis not in found:
            found.setdefault(axis, []).append((dim, why))
    result = {axis: (dim, "--dims") for axis, dim in overrides.items()}
    for axis, candidates in found.items():
        if axis in result:
            continue
        # The strongest evidence wins (a CF axis attribute over units alone, e.g. time with
        # axis=T beside a forecast's init time in "hours since ..."); a tie is ambiguous.
        best = min(_rank(why) for _, why in candidates)
        candidates = [(d, why) for d, why in candidates if _rank(why) == best]
        if len(candidates) > 1:
            desc = " and ".join(f"{d!r} ({why})" for d, why in candidates)
            raise DataError(
                f"{where}ambiguous {axis} axis: {desc} both qualify; "
                f"choose one with --dims {axis}={candidates[0][0]} (variables on different "
                "grids, such as staggered winds: keep those of one grid with --variables)"
            )
        result[axis] = candidates[0]
    return result
