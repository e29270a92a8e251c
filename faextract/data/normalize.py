"""Normalization as pure functions around the model.

``normalize(x, stats)`` maps a ``(time, channel, lat, lon)`` array to standardized anomalies,
``(x - climatology[season(t)] - mean) / std``, and ``denormalize`` inverts it exactly up to
float rounding (roundtrip contract: ``denormalize(normalize(x, s), s) ~= x``). Channels are
matched by name, so the stats may list channels in any order; a channel the stats lack is an
error. NaN (invalid) stays NaN: the caller turns it into zeros plus a validity mask.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from faextract.data import harmonics
from faextract.data.stats import season_index
from faextract.data.time import calendar_of, season_phase
from faextract.errors import DataError


def _aligned(
    x: xr.DataArray, stats: xr.Dataset
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    have = [str(c) for c in stats["channel"].values]
    want = [str(c) for c in x["channel"].values]
    missing = [c for c in want if c not in have]
    if missing:
        raise DataError(
            f"variable {missing[0]!r} is not in the normalization statistics "
            f"(they cover: {', '.join(have)})"
        )
    mean = stats["mean"].sel(channel=want).astype("float32")
    std = stats["std"].sel(channel=want).astype("float32")
    clim = None
    if "climatology" in stats:
        c = stats["climatology"].sel(channel=want)
        if c.sizes["lat"] != x.sizes["lat"] or c.sizes["lon"] != x.sizes["lon"]:
            raise DataError(
                f"climatology grid {c.sizes['lat']}x{c.sizes['lon']} does not match the data grid "
                f"{x.sizes['lat']}x{x.sizes['lon']}"
            )
        values = climatology_at(stats, x["time"], _oriented(c, x["lat"].values).values)
        clim = xr.DataArray(values.astype("float32"), dims=("time", "channel", "lat", "lon"))
    return mean.drop_vars("channel"), std.drop_vars("channel"), clim


def _oriented(maps: xr.DataArray, lat: np.ndarray | None) -> xr.DataArray:
    """Climatology maps in the data's latitude order: statistics computed before grids were
    read north to south may run south to north."""
    if lat is None or "lat" not in maps.coords or maps.sizes["lat"] < 2 or len(lat) < 2:
        return maps
    if np.allclose(maps["lat"].values[::-1], lat) and not np.allclose(maps["lat"].values, lat):
        return maps.isel(lat=slice(None, None, -1))
    return maps


def climatology_at(stats: xr.Dataset, time: xr.DataArray, maps: np.ndarray) -> np.ndarray:
    """The climatology ``(T, C, H, W)`` at each of ``time`` from the statistics' ``maps``
    ``(season, C, H, W)``: month or day-of-year maps looked up, harmonics evaluated."""
    kind = stats.attrs.get("climatology", "monthly")
    if kind == "harmonic":
        phase = season_phase(time.values, calendar_of(time))
        return harmonics.evaluate(maps, phase, int(stats.attrs.get("harmonics", harmonics.HARMONICS)))
    keys = np.clip(season_index(time, kind), 1, maps.shape[0]) - 1
    return maps[keys]


def normalize(x: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """Standardize ``x (time, channel, lat, lon)`` with ``stats``; lazy if ``x`` is."""
    mean, std, clim = _aligned(x, stats)
    y = x - clim.data if clim is not None else x
    return ((y - mean) / std).astype("float32")


def denormalize(y: xr.DataArray, stats: xr.Dataset) -> xr.DataArray:
    """Inverse of :func:`normalize`."""
    mean, std, clim = _aligned(y, stats)
    x = y * std + mean
    if clim is not None:
        x = x + clim.data
    return x.astype("float32")


class ArrayNormalizer:
    """:func:`normalize` for numpy blocks ``(T, C, H, W)`` of one cube, without xarray overhead.

    The streaming dataset normalizes many small time blocks; building an xarray expression for
    each costs more than the arithmetic. This precomputes the aligned statistics once; results
    equal :func:`normalize`'s (tested in tests/test_dataset.py).
    """

    def __init__(
        self,
        stats: xr.Dataset,
        channels,
        time: xr.DataArray,
        lat_size: int,
        lon_size: int,
        lat: np.ndarray | None = None,
    ):
        probe = xr.DataArray(
            np.zeros((1, len(channels), lat_size, lon_size), dtype=np.float32),
            dims=("time", "channel", "lat", "lon"),
            coords={"channel": list(channels), "time": time.values[:1]},
        )
        _aligned(probe, stats)  # validates channels and the climatology grid
        want = [str(c) for c in channels]
        self.mean = stats["mean"].sel(channel=want).values.astype(np.float32)[None, :, None, None]
        self.std = stats["std"].sel(channel=want).values.astype(np.float32)[None, :, None, None]
        self.maps = self.basis = self.keys = None
        if "climatology" in stats:
            maps = _oriented(stats["climatology"].sel(channel=want), lat)
            self.maps = maps.values.astype(np.float32)
            kind = stats.attrs.get("climatology", "monthly")
            if kind == "harmonic":
                order = int(stats.attrs.get("harmonics", harmonics.HARMONICS))
                phase = season_phase(time.values, calendar_of(time))
                self.basis = harmonics.basis(phase, order).astype(np.float32)
            else:
                self.keys = np.clip(season_index(time, kind), 1, stats.sizes["season"]) - 1

    def climatology(self, t0: int, t1: int) -> np.ndarray | None:
        """The climatology of steps ``t0 .. t1`` ``(T, C, H, W)``, or None without one."""
        if self.basis is not None:
            return np.tensordot(self.basis[t0:t1], self.maps, axes=(1, 0))
        if self.keys is not None:
            return self.maps[self.keys[t0:t1]]
        return None

    def __call__(self, x: np.ndarray, t0: int, *, in_place: bool = False) -> np.ndarray:
        """Normalize ``x``, the steps ``t0 .. t0 + len(x)`` of the cube.

        ``in_place`` overwrites a float32 ``x`` (a block the caller owns) instead of
        allocating: the same float32 operations in the same order, so the same result.
        """
        clim = self.climatology(t0, t0 + x.shape[0])
        if not (in_place and x.dtype == np.float32):
            if clim is not None:
                x = x - clim
            return ((x - self.mean) / self.std).astype(np.float32, copy=False)
        if clim is not None:
            x -= clim
        x -= self.mean
        x /= self.std
        return x
