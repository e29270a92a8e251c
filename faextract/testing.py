"""Test helpers shipped with the package: synthetic climate cubes with known structure.

:func:`synthetic_cube` builds a small multivariate cube with what real reanalysis has and what
a feature extractor should find: variables of different units and magnitudes, a seasonal cycle
(opposite in the two hemispheres), an ENSO-like oscillation in a tropical "east Pacific" box
with a *planted teleconnection* to a distant extratropical box (lagged, opposite sign), red
noise, and a land mask of NaNs over the sea-surface variable. Any CF calendar can be used.
The bundled ``sample_data/sample_cube.nc`` is made with it (see ``sample_data/make_sample.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cftime
import numpy as np
import xarray as xr

#: Planted regions (lat0, lat1, lon0, lon1) in degrees: the ENSO-like source and its teleconnection.
ENSO_BOX = (-10.0, 10.0, 190.0, 270.0)
TELECONNECTION_BOX = (40.0, 60.0, 290.0, 345.0)

#: Config overrides for a model and run small enough to train in seconds on a CPU (tests).
TINY_RUN = [
    "model.filters=8",
    "model.layers=1",
    "model.stem_channels=8",
    "model.embedding_dim=8",
    "model.downsample=1",
    "model.cell_options={attention_dim: 4, temporal_heads: 2, attention_every: 2}",
    "tiles.window=6",
    "tiles.stride=6",
    "train.batch_size=4",
    "data.climatology=none",
]

_VARIABLES = {
    # name: (long_name, units, base, seasonal amplitude, noise std, enso loading)
    "sst": ("sea surface temperature", "K", 288.0, 3.0, 0.4, 1.5),
    "t2m": ("2 metre temperature", "K", 283.0, 8.0, 1.0, 0.8),
    "sp": ("surface pressure", "Pa", 101325.0, 400.0, 150.0, -120.0),
    "u10": ("10 metre U wind component", "m s-1", 0.0, 2.0, 1.5, -1.2),
    "sshf": ("surface sensible heat flux", "W m-2", -15.0, 20.0, 8.0, 6.0),
}


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Boolean ``(lat, lon)`` mask, True over three blob 'continents' (about 30% of cells)."""
    la, lo = np.meshgrid(lat, np.mod(lon, 360.0), indexing="ij")
    land = np.zeros(la.shape, dtype=bool)
    for c_lat, c_lon, r_lat, r_lon in ((45, 100, 30, 55), (10, 20, 35, 25), (40, 255, 25, 25)):
        d = ((la - c_lat) / r_lat) ** 2 + ((lo - c_lon) / r_lon) ** 2
        land |= d < 1.0
    land |= la < -70
    return land


def _smooth_noise(rng: np.random.Generator, shape, passes: int = 2) -> np.ndarray:
    """Spatially smooth noise (box-filtered white noise, periodic in lon), unit std."""
    x = rng.standard_normal(shape)
    for _ in range(passes):
        x = (x + np.roll(x, 1, -1) + np.roll(x, -1, -1)) / 3.0
        x[..., 1:-1, :] = (x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]) / 3.0
    return x / (x.std() + 1e-12)


#: The period of the planted ENSO-like oscillation, in years.
ENSO_PERIOD_YEARS = 3.7


def enso_index(nt: int, steps_per_year: float, rng: np.random.Generator) -> np.ndarray:
    """An ENSO-like index: a 3.7-year oscillation plus AR(1) noise, unit-ish amplitude."""
    t = np.arange(nt) / steps_per_year
    ar = np.zeros(nt)
    phi = np.exp(-1.0 / (0.25 * steps_per_year))
    eps = rng.standard_normal(nt) * np.sqrt(1 - phi**2) * 0.4
    for i in range(1, nt):
        ar[i] = phi * ar[i - 1] + eps[i]
    return np.sin(2 * np.pi * t / ENSO_PERIOD_YEARS + 0.6) + ar


# One generator for every test cube and the sample: the variables' recipes read best in one place.
def synthetic_cube(
    nt: int = 365,
    nlat: int = 24,
    nlon: int = 48,
    variables: Sequence[str] = ("sst", "t2m", "sp", "u10"),
    *,
    calendar: str = "noleap",
    start: str = "2000-01-01",
    freq_days: float = 1.0,
    seed: int = 0,
    levels: Sequence[float] | None = None,
    lon0: float = 0.0,
    teleconnection_lag: int = 10,
) -> xr.Dataset:
    """A synthetic multivariate daily cube ``(time, [level,] lat, lon)`` with CF metadata.

    ``lat`` runs north to south like ERA5; ``lon`` covers the globe from ``lon0``. With
    ``levels``, every variable but ``sst`` gains a ``level`` axis (hPa). ``sst`` is NaN over land.
    """
    unknown = [v for v in variables if v not in _VARIABLES]
    if unknown:
        raise ValueError(
            f"unknown synthetic variable {unknown[0]!r}; choose from {list(_VARIABLES)}"
        )
    rng = np.random.default_rng(seed)
    dlat, dlon = 180.0 / nlat, 360.0 / nlon
    lat = 90.0 - dlat / 2 - dlat * np.arange(nlat)
    lon = lon0 + dlon / 2 + dlon * np.arange(nlon)
    days_per_year = {"360_day": 360.0, "noleap": 365.0, "365_day": 365.0}.get(calendar, 365.25)
    steps_per_year = days_per_year / freq_days
    t = np.arange(nt)
    phase = 2 * np.pi * (t / steps_per_year)
    la = lat[:, None]
    hemi = np.sign(la) * np.minimum(np.abs(la) / 30.0, 1.0)
    enso = enso_index(nt + teleconnection_lag, steps_per_year, rng)
    src = _box(lat, lon, ENSO_BOX)
    dst = _box(lat, lon, TELECONNECTION_BOX)
    land = land_mask(lat, lon)
    coslat = np.cos(np.deg2rad(la))

    data_vars = {}
    for name in variables:
        long_name, units, base, amp, noise, load = _VARIABLES[name]
        field = np.full((nlat, nlon), base)
        if name in ("sst", "t2m"):
            field = field + 25.0 * (coslat - 0.6)
        seasonal = -amp * hemi[None] * np.cos(phase - 0.3)[:, None, None]
        signal = (
            load * enso[teleconnection_lag:, None, None] * src[None]
            - 0.7 * load * enso[:nt, None, None] * dst[None]
        )
        red = _red_noise(rng, (nt, nlat, nlon), steps_per_year) * noise
        values = field[None] + seasonal + signal + red
        if name == "sst":
            values = np.where(land[None], np.nan, values)
        attrs = {"long_name": long_name, "units": units}
        if levels is not None and name != "sst":
            levs = np.asarray(levels, dtype=float)
            scale = (levs / 1000.0) ** 0.3
            values = values[:, None] * scale[None, :, None, None]
            data_vars[name] = (("time", "level", "lat", "lon"), values.astype("float32"), attrs)
        else:
            data_vars[name] = (("time", "lat", "lon"), values.astype("float32"), attrs)

    units = f"days since {start}"
    y, m, d = (int(x) for x in start.split("-"))
    cftime.datetime(y, m, d, calendar=calendar)  # raises early for a date the calendar lacks
    coords = {
        "time": (
            "time",
            (np.arange(nt) * freq_days).astype("float64"),
            {"standard_name": "time", "axis": "T", "units": units, "calendar": calendar},
        ),
        "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    }
    if levels is not None:
        coords["level"] = (
            "level",
            np.asarray(levels, dtype=float),
            {"standard_name": "air_pressure", "units": "hPa", "positive": "down", "axis": "Z"},
        )
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "faextract synthetic climate cube",
        "source": "faextract.testing.synthetic_cube",
        "comment": (
            f"ENSO-like index in box {ENSO_BOX} (lat0, lat1, lon0, lon1), teleconnected with "
            f"opposite sign and lag {teleconnection_lag} steps to box {TELECONNECTION_BOX}"
        ),
    }
    return ds


def _box(lat: np.ndarray, lon: np.ndarray, box) -> np.ndarray:
    la, lo = np.meshgrid(lat, np.mod(lon, 360.0), indexing="ij")
    lat0, lat1, lon0, lon1 = box
    inside = (la >= lat0) & (la <= lat1) & (lo >= lon0) & (lo <= lon1)
    return inside.astype(float)


def _red_noise(rng: np.random.Generator, shape, steps_per_year: float) -> np.ndarray:
    nt = shape[0]
    phi = np.exp(-1.0 / max(2.0, steps_per_year / 36.0))
    out = np.empty(shape)
    out[0] = _smooth_noise(rng, shape[1:])
    for i in range(1, nt):
        out[i] = phi * out[i - 1] + np.sqrt(1 - phi**2) * _smooth_noise(rng, shape[1:], passes=1)
    return out


def write_netcdf(
    ds: xr.Dataset, path, *, packed: bool = False, time_chunk: int | None = None
) -> None:
    """Write ``ds`` as NetCDF4 with zlib; ``packed`` stores int16 with scale_factor/add_offset.

    ``time_chunk`` stores each variable in chunks of that many steps (full in space), as
    reanalysis archives do; by default netCDF4 picks (for small files: one chunk per variable).
    """
    encoding = {}
    for name, da in ds.data_vars.items():
        enc = {"zlib": True, "complevel": 5, "shuffle": True}
        if time_chunk:
            enc["chunksizes"] = tuple(
                min(time_chunk, n) if d == "time" else n
                for d, n in zip(da.dims, da.shape, strict=True)
            )
        if packed:
            lo, hi = float(np.nanmin(da.values)), float(np.nanmax(da.values))
            # ~1/4000 of the range: far below the noise, and compresses 2x better than full int16.
            scale = (hi - lo) / 4000.0 or 1.0
            enc.update(
                dtype="int16",
                scale_factor=scale,
                add_offset=(hi + lo) / 2.0,
                _FillValue=np.int16(-32767),
            )
        else:
            enc["_FillValue"] = np.float32(1e20)
        encoding[name] = enc
    for name in ds.coords:
        encoding[name] = {"_FillValue": None}
    ds.to_netcdf(path, encoding=encoding, format="NETCDF4")


def assert_one_line_error(result, *words: str, exit_code: int = 2) -> str:
    """A CLI result (typer's ``CliRunner``) that failed as users must see failures: the exit
    code, no traceback, one line (progress lines, which start with ``[``, aside) naming
    ``words``. Returns that line."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
