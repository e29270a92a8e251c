"""Normalization statistics, computed lazily and out-of-core with dask.

Per channel (variable, or variable@level): NaN-aware mean and standard deviation, optionally
weighted by cos(latitude) so that polar rows do not dominate; optionally a per-gridpoint
climatology (monthly or day-of-year, calendar-aware), in which case mean and std describe the
*anomalies* from it. Statistics are data: saved to NetCDF or Zarr next to (and inside) the
model, never hard-coded. The same pass validates the values (all-NaN channels, infinities).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr

from faextract.data import harmonics
from faextract.data.cube import Cube
from faextract.data.time import season_phase, to_cftime
from faextract.errors import DataError, first_line

#: ``harmonic``: the mean and 3 annual harmonics per grid point (smooth, 7 maps; for daily and
#: sub-daily data); ``monthly``: calendar-month means (exact for monthly data, but removed from
#: daily data it jumps on every first of the month); ``dayofyear``: 366 smoothed daily maps.
#: ``auto`` chooses: monthly for monthly or coarser steps, harmonic for finer ones, none for
#: less than a year of data (see :func:`resolve_climatology`).
CLIMATOLOGIES = ("auto", "none", "monthly", "dayofyear", "harmonic")
#: Day-of-year climatologies are smoothed with a circular running mean of this many days:
#: a raw daily mean over a few years is mostly weather noise.
DOY_SMOOTHING_DAYS = 31


@dataclass(frozen=True)
class StatsOptions:
    area_weighted: bool = True
    climatology: str = "none"

    def __post_init__(self):
        if self.climatology not in CLIMATOLOGIES:
            raise DataError(
                f"climatology must be one of {', '.join(CLIMATOLOGIES)}, got {self.climatology!r}"
            )


def season_index(time: xr.DataArray, kind: str) -> np.ndarray:
    """1-based month or day of year for each timestamp (cftime-aware)."""
    if kind == "monthly":
        return np.asarray(time.dt.month.values, dtype=np.int64)
    if kind == "dayofyear":
        return np.asarray(time.dt.dayofyear.values, dtype=np.int64)
    raise ValueError(f"no season index for climatology {kind!r}")


def resolve_climatology(kind: str, cube: Cube) -> tuple[str, str]:
    """The climatology ``auto`` means for ``cube`` (other kinds pass through), and why."""
    if kind != "auto":
        return kind, ""
    times = to_cftime(cube.time.values[: min(cube.shape[0], 400)], cube.calendar)
    if len(times) < 2:
        return "none", "a single time step has no seasonal cycle"
    step = float(np.median([(b - a).total_seconds() for a, b in zip(times[:-1], times[1:], strict=True)]))
    step /= 86400
    first, last = to_cftime(cube.time.values[[0, -1]], cube.calendar)
    span = (last - first).total_seconds() / 86400 + step
    if span < 360:
        return "none", f"{span:.0f} days of data hold no full seasonal cycle"
    if step >= 27:
        months = {t.month for t in to_cftime(cube.time.values, cube.calendar)}
        if len(months) < 12:
            return "none", f"the data cover only {len(months)} calendar months"
        return "monthly", "monthly steps: calendar-month means"
    return "harmonic", "steps shorter than a month: a smooth harmonic fit (no month-boundary jumps)"


def _area_weights(lat: np.ndarray, nlon: int) -> np.ndarray:
    w = np.cos(np.deg2rad(lat.astype(np.float64))).clip(min=0.0)
    return np.repeat(w[:, None], nlon, axis=1)


def compute_stats(
    cube: Cube, options: StatsOptions | None = None, progress=None, reference: Cube | None = None
) -> xr.Dataset:
    """Compute normalization statistics for ``cube``; validates the values on the way.

    Returns a Dataset with ``mean(channel)``, ``std(channel)``, ``valid_fraction(channel)`` and,
    for a climatology, ``climatology(season, channel, lat, lon)``. ``progress`` is a
    :class:`faextract.runtime.progress.Progress`-like object fed by a dask callback.

    ``reference``: the steps the climatology is fitted on (a reference period: the whole
    record, or e.g. 1991-2020), same channels and grid; default ``cube``. Mean and std are
    always those of ``cube``'s anomalies from it. A seasonal cycle fitted on less than two
    or three years takes in part of the slow variability (a 3.7-year oscillation over 1.7
    years looks like an annual cycle) and leaves the anomalies without it.
    """
    options = options or StatsOptions()
    kind, _why = resolve_climatology(options.climatology, cube if reference is None else reference)
    options = StatsOptions(area_weighted=options.area_weighted, climatology=kind)
    arr, finite, checks = _values(cube)
    T, C, H, W = arr.shape
    clim, count_v = None, None
    if options.climatology != "none":
        if reference is None:
            # The climatology's pass also checks the values; the moments then need no second check.
            clim, count_v = _climatology(cube, arr, finite, checks, kind, progress)
        else:
            _check_reference(cube, reference)
            clim, _ = _climatology(reference, *_values(reference), kind, progress)
        arr = arr - _climatology_of(cube, clim, kind, arr.chunks)
        finite = da.isfinite(arr)
    w2d = _area_weights(cube.lat, W) if options.area_weighted else np.ones((H, W))
    wf = da.where(finite, da.from_array(w2d, chunks=-1)[None, None], 0.0)
    xz = da.where(finite, arr, 0.0)
    moments = ((wf).sum(axis=(0, 2, 3)), (wf * xz).sum(axis=(0, 2, 3)), (wf * xz * xz).sum(axis=(0, 2, 3)))
    with _progress(progress, "statistics"):
        if count_v is None:
            sw, s1, s2, infs_v, count_v = dask.compute(*moments, *checks)
            _validate(cube, infs_v, count_v)
        else:
            sw, s1, s2 = dask.compute(*moments)
    mean = s1 / np.maximum(sw, 1e-300)
    std = np.sqrt(np.maximum(s2 / np.maximum(sw, 1e-300) - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel normalizes to 0, not inf
    out = _statistics_dataset(cube, options, mean, std, count_v / float(T * H * W), clim)
    if clim is not None:
        ref = cube if reference is None else reference
        out.attrs["climatology_start"] = str(ref.time.values[0])
        out.attrs["climatology_end"] = str(ref.time.values[-1])
    return out


def _values(cube: Cube):
    """``cube``'s values ``(T, C, H, W)`` as float64 dask, where they are finite, and the
    lazy per-channel checks ``(infinite values, finite values)``."""
    arr = cube.to_array().data.astype(np.float64)
    finite = da.isfinite(arr)
    return arr, finite, (da.isinf(arr).sum(axis=(0, 2, 3)), finite.sum(axis=(0, 2, 3)))


def _check_reference(cube: Cube, reference: Cube) -> None:
    if list(reference.channels) != list(cube.channels) or reference.shape[2:] != cube.shape[2:]:
        raise DataError(
            f"the climatology's reference steps ({', '.join(reference.channels)} on "
            f"{reference.shape[2]}x{reference.shape[3]}) do not match the data "
            f"({', '.join(cube.channels)} on {cube.shape[2]}x{cube.shape[3]})"
        )


def _climatology(cube: Cube, arr, finite, checks, kind: str, progress):
    """``(climatology (S, C, H, W), valid counts per channel)`` of ``arr``, ``cube``'s values:
    the harmonic fit, or the mean of each month or day of the year, per grid point."""
    xz = da.where(finite, arr, 0.0)
    if kind == "harmonic":
        phase = season_phase(cube.time.values, cube.calendar)
        b = da.from_array(harmonics.basis(phase), chunks=(arr.chunks[0], -1))
        b2 = da.from_array(harmonics.basis(phase, 2 * harmonics.HARMONICS), chunks=(arr.chunks[0], -1))
        rhs = da.einsum("tk,tchw->kchw", b, xz)
        moments = da.einsum("tj,tchw->jchw", b2, finite.astype(np.float64))
        with _progress(progress, "climatology"):
            rhs, moments, infs_v, count_v = dask.compute(rhs, moments, *checks)
        _validate(cube, infs_v, count_v)
        return harmonics.solve(moments, rhs), count_v  # (K, C, H, W), NaN where too few valid steps
    keys = season_index(cube.time, kind)
    onehot = np.zeros((arr.shape[0], 12 if kind == "monthly" else 366), dtype=np.float64)
    onehot[np.arange(arr.shape[0]), keys - 1] = 1.0
    oh = da.from_array(onehot, chunks=(arr.chunks[0], -1))
    sums = da.einsum("ts,tchw->schw", oh, xz)
    cnts = da.einsum("ts,tchw->schw", oh, finite.astype(np.float64))
    with _progress(progress, "climatology"):
        sums, cnts, infs_v, count_v = dask.compute(sums, cnts, *checks)
    _validate(cube, infs_v, count_v)
    return _finish_climatology(sums, cnts, keys, kind, cube), count_v


def _climatology_of(cube: Cube, clim: np.ndarray, kind: str, chunks):
    """The climatology at each of ``cube``'s steps, lazily: ``(T, C, H, W)`` dask."""
    if kind == "harmonic":
        b = da.from_array(harmonics.basis(season_phase(cube.time.values, cube.calendar)), chunks=(chunks[0], -1))
        return da.einsum("tk,kchw->tchw", b, da.from_array(clim, chunks=-1))
    keys = season_index(cube.time, kind)
    return da.from_array(clim, chunks=(-1, -1, -1, -1))[keys - 1].rechunk(chunks)


def _statistics_dataset(cube: Cube, options: StatsOptions, mean, std, valid, clim) -> xr.Dataset:
    out = xr.Dataset(
        {
            "mean": ("channel", mean.astype(np.float64), {"long_name": "mean of each channel"}),
            "std": (
                "channel",
                std.astype(np.float64),
                {"long_name": "standard deviation of each channel"},
            ),
            "valid_fraction": (
                "channel",
                valid.astype(np.float64),
                {"long_name": "fraction of finite values", "units": "1"},
            ),
        },
        coords={"channel": list(cube.channels)},
    )
    if clim is not None:
        out["climatology"] = (
            ("season", "channel", "lat", "lon"),
            clim.astype(np.float32),
            {"long_name": f"{options.climatology} climatology (per grid point)"},
        )
        out = out.assign_coords(season=np.arange(1, clim.shape[0] + 1), lat=cube.lat, lon=cube.lon)
        if options.climatology == "harmonic":
            out["climatology"].attrs["long_name"] = (
                f"harmonic climatology: mean, then cos and sin of {harmonics.HARMONICS} annual "
                "harmonics of the phase in the year (per grid point)"
            )
            out.attrs["harmonics"] = harmonics.HARMONICS
    out.attrs = {
        "title": "faextract normalization statistics",
        "area_weighted": int(options.area_weighted),
        "climatology": options.climatology,
        "calendar": cube.calendar,
        "time_start": str(cube.time.values[0]),
        "time_end": str(cube.time.values[-1]),
        "sources": "; ".join(os.path.basename(s) for s in cube.sources),
    }
    return out


def _validate(cube: Cube, infs: np.ndarray, count: np.ndarray) -> None:
    src = cube.source_label
    for name, n_inf, n in zip(cube.channels, infs, count, strict=True):
        if n_inf:
            raise DataError(f"{src}: variable {name!r} has {int(n_inf)} infinite values")
        if n == 0:
            raise DataError(f"{src}: variable {name!r} is all NaN (no valid value to learn from)")


def _finish_climatology(sums, cnts, keys, kind, cube: Cube) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        clim = sums / cnts
    if kind == "dayofyear":
        present = np.unique(keys)
        # Fill days absent from the data (e.g. day 366) from their neighbours, then smooth.
        full = np.arange(1, clim.shape[0] + 1)
        missing = np.setdiff1d(full, present)
        for day in missing:
            nearest = present[np.argmin(np.abs(present - day))]
            clim[day - 1] = clim[nearest - 1]
        clim = _circular_running_mean(clim, DOY_SMOOTHING_DAYS)
    else:
        for month in range(1, 13):
            if month not in keys:
                raise DataError(
                    f"{cube.source_label}: a monthly climatology needs every calendar month, and "
                    f"the steps it is computed on ({cube.time.values[0]} to "
                    f"{cube.time.values[-1]}) have none in month {month}; in training the "
                    "validation hold-out (data.val_fraction) may have taken it (data."
                    "climatology_period: all fits the climatology on the whole record)"
                )
    return clim


def _circular_running_mean(x: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    valid = np.isfinite(x)
    xz = np.where(valid, x, 0.0)
    acc = np.zeros_like(xz)
    cnt = np.zeros_like(xz)
    for k in range(-half, half + 1):
        acc += np.roll(xz, k, axis=0)
        cnt += np.roll(valid, k, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


class _progress:
    """Drive a progress reporter from dask's task callbacks."""

    def __init__(self, progress, label: str):
        self.progress, self.label = progress, label

    def __enter__(self):
        if self.progress is None:
            return self
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _start_state(self, dsk, state):
                outer.total = sum(len(state[k]) for k in ("ready", "waiting", "running"))
                outer.task = outer.progress.start(outer.label, total=outer.total)

            def _posttask(self, key, result, dsk, state, worker_id):
                outer.progress.advance(outer.task, 1)

        self.cb = _CB()
        self.cb.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.cb.__exit__(*exc)
            if hasattr(self, "task"):
                self.progress.finish(self.task)
        return False


def save_stats(stats: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write statistics to NetCDF (``.nc``) or Zarr (anything else), through a temporary
    name; replaces only a statistics file faextract wrote, and only with ``overwrite``."""
    import shutil

    from faextract.outputs import claim_output, is_stats_file, remove_output

    path = os.fspath(path)
    claim_output(path, overwrite=overwrite, ours=is_stats_file, what="statistics file")
    tmp = path + ".partial"
    try:
        if path.endswith(".nc"):
            stats.to_netcdf(tmp)
        else:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            stats.to_zarr(tmp, mode="w")
        remove_output(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.unlink(tmp)


def load_stats(path: str | os.PathLike) -> xr.Dataset:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such statistics file")
    try:
        if os.path.isdir(path):
            stats = xr.open_zarr(path).load()
        else:
            stats = xr.load_dataset(path)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: not a faextract statistics file ({first_line(err)})") from None
    missing = [v for v in ("mean", "std", "channel") if v not in stats.variables]
    if missing:
        raise DataError(
            f"{path}: not a faextract statistics file (no {missing[0]!r}; make one with "
            "faextract stats)"
        )
    return stats
