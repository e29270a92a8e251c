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

from faextract.data.stats import season_index
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
        kind = stats.attrs.get("climatology", "monthly")
        keys = season_index(x["time"], kind)
        nseason = stats.sizes["season"]
        keys = np.clip(keys, 1, nseason) - 1
        c = stats["climatology"].sel(channel=want)
        if c.sizes["lat"] != x.sizes["lat"] or c.sizes["lon"] != x.sizes["lon"]:
            raise DataError(
                f"climatology grid {c.sizes['lat']}x{c.sizes['lon']} does not match the data grid "
                f"{x.sizes['lat']}x{x.sizes['lon']}"
            )
        clim = c.isel(season=xr.DataArray(keys, dims="time")).drop_vars(
            ["season", "lat", "lon"], errors="ignore"
        )
        clim = clim.transpose("time", "channel", "lat", "lon").astype("float32")
    return mean.drop_vars("channel"), std.drop_vars("channel"), clim


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
