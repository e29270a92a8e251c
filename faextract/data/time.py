"""Time axes: decoding every CF calendar, and each timestamp's phase in its year.

Files are opened with ``decode_times=False`` and the time coordinate is decoded here, because
xarray refuses reference year 0 (``hours since 0000-01-01``, common in climatologies) in the
standard and julian calendars; cftime decodes those with ``has_year_zero=True``. Decoded times
are cftime objects for non-standard calendars and ``datetime64`` otherwise (xarray's choice).
The original units and calendar are kept in ``encoding`` so outputs can reuse them.
"""

from __future__ import annotations

import warnings

import cftime
import numpy as np
import pandas as pd
import xarray as xr
from xarray.coding.times import decode_cf_datetime

from faextract.errors import DataError, first_line

# Reference year 0 is deliberately supported (climatologies use it); cftime warns that CF
# does not define it, on every decode and every pickle of such a date.
warnings.filterwarnings("ignore", message="this date/calendar/year zero convention")

OutOfBoundsError = getattr(pd.errors, "OutOfBoundsDatetime", ValueError)


def decode_time(values: np.ndarray, units: str, calendar: str = "standard") -> np.ndarray:
    """Decode numeric CF times; reference year 0 falls back to cftime with year zero.

    ``months since`` / ``years since`` with whole numbers (monthly and yearly products, e.g.
    GPCP) count calendar months or years from the reference date; CF defines those units as
    fixed fractions of a year, which no such file means and xarray refuses.
    """
    calendar = (calendar or "standard").lower()
    numbers = np.asarray(values)
    if numbers.dtype.kind == "f" and not np.isfinite(numbers).all():
        i = int(np.nonzero(~np.isfinite(numbers))[0][0])
        raise DataError(
            f"time value {i} is {numbers[i]} (missing); a time axis must be complete (cftime "
            "would read it as the reference date)"
        )
    step = units.strip().lower().split(" ", 1)[0]
    exact = calendar == "360_day" and step in ("month", "months")  # cftime's own, exact
    if step in ("month", "months", "year", "years") and not exact:
        return _decode_calendar_steps(np.asarray(values), units, calendar)
    try:
        with warnings.catch_warnings():
            # "hours since 1-1-1" (NCEP/NCAR reanalysis): xarray warns that the year is not
            # zero-padded, then reads it as year 1, which is what such files mean.
            warnings.filterwarnings("ignore", message="Ambiguous reference date string")
            return np.asarray(decode_cf_datetime(np.asarray(values), units, calendar))
    except (ValueError, OverflowError, OutOfBoundsError) as err:
        try:
            with warnings.catch_warnings():
                # Year 0 is outside CF for most calendars; climatologies use it all the same,
                # and the outputs keep it: cftime's CFWarning would only add a stray line.
                warnings.simplefilter("ignore", cftime.CFWarning)
                return np.asarray(
                    cftime.num2date(
                        np.asarray(values),
                        units,
                        calendar,
                        only_use_cftime_datetimes=True,
                        has_year_zero=True,
                    )
                )
        except Exception:  # noqa: BLE001 - report the original, clearer error
            raise DataError(f"cannot decode time units {units!r} ({calendar}): {err}") from err


_ABSOLUTE = "day as %y%m%d.%f"


def is_text(values: np.ndarray) -> bool:
    """Time written as text (``"2001-01-01T06:00:00"``), as some converted files have it."""
    values = np.asarray(values)
    return values.dtype.kind in "US" or (
        values.dtype == object and values.size > 0 and isinstance(values.flat[0], (str, bytes))
    )


def decode_text(values: np.ndarray) -> np.ndarray:
    """ISO 8601 date strings -> ``datetime64[ns]``; anything else is a :class:`DataError`."""
    values = np.asarray(values)
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()]
    try:
        parsed = pd.to_datetime(text, format="ISO8601")
    except (ValueError, TypeError) as err:
        raise DataError(f"time is text but not ISO 8601 dates ({first_line(err)})") from None
    return np.asarray(parsed.values, dtype="datetime64[ns]").reshape(values.shape)


def is_absolute(units: str) -> bool:
    """CDO's absolute time axis (``day as %Y%m%d.%f``, from ``cdo -a`` or some operators)."""
    return " as " in units.lower()


def decode_absolute(values: np.ndarray, units: str, calendar: str = "standard"):
    """Decode CDO's ``day as %Y%m%d.%f`` (20000101.25 is 2000-01-01 06:00).

    Returns ``(decoded, relative_units)``: the times as :func:`decode_time` gives them, and
    equivalent ``days since`` units for outputs.
    """
    if units.strip().lower() != _ABSOLUTE:
        raise DataError(f"unsupported absolute time units {units!r}; expected 'day as %Y%m%d.%f'")
    values = np.asarray(values, dtype=np.float64)
    if values.size and not np.all(np.isfinite(values)):
        raise DataError(f"time values in {units!r} must be finite")
    day = np.floor(values).astype(np.int64)
    seconds = np.round((values - day) * 86400.0).astype(np.int64)
    dates = []
    for ymd, sec in zip(day.ravel(), seconds.ravel(), strict=True):
        y, m, d = int(ymd // 10000), int(ymd // 100 % 100), int(ymd % 100)
        try:
            base = cftime.datetime(y, m, d, calendar=calendar, has_year_zero=True)
        except ValueError:
            raise DataError(f"time value {ymd} is not a date in {units!r} ({calendar})") from None
        dates.append(base + pd.Timedelta(seconds=int(sec)).to_pytimedelta())
    if not dates:
        return np.asarray(values), "days since 1970-01-01"
    return _from_dates(dates, dates[0], values.shape, calendar)


def _from_dates(dates: list, origin, shape, calendar: str) -> tuple[np.ndarray, str]:
    """cftime ``dates`` as :func:`decode_time` gives times, and ``days since`` ``origin``'s
    day: the units outputs will use."""
    relative = f"days since {origin.year:04d}-{origin.month:02d}-{origin.day:02d}"
    numbers = cftime.date2num(dates, relative, calendar=calendar, has_year_zero=True)
    numbers = np.asarray(numbers, dtype=np.float64).reshape(shape)
    return decode_time(numbers, relative, calendar), relative


def _decode_calendar_steps(values: np.ndarray, units: str, calendar: str) -> np.ndarray:
    """``n months since REF`` -> REF + n calendar months (``years``: 12 n months)."""
    step, _, ref = units.strip().partition(" since ")
    per = 12 if step.strip().lower().startswith("year") else 1
    if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
        raise DataError(
            f"time units {units!r} with fractional values: only whole {step.strip()} "
            "can be placed on a calendar"
        )
    try:
        origin = cftime.num2date(0, f"days since {ref.strip()}", calendar, has_year_zero=True)
    except Exception as err:  # noqa: BLE001 - cftime's messages name the bad reference
        raise DataError(f"cannot decode time units {units!r} ({calendar}): {err}") from err
    months = np.round(values).astype(np.int64) * per + (origin.year * 12 + origin.month - 1)
    dates = [_add_months(origin, int(m)) for m in months.ravel()]
    return _from_dates(dates, origin, values.shape, calendar)[0]


def _add_months(origin: cftime.datetime, month_index: int) -> cftime.datetime:
    """``origin`` moved to absolute month ``year * 12 + month - 1``, its day kept or, past the
    end of that month (Jan 31 + 1 month), clamped to the month's last day."""
    year, month = month_index // 12, month_index % 12 + 1
    first = origin.replace(year=year, month=month, day=1)
    following = first.replace(year=year + month // 12, month=month % 12 + 1)
    return origin.replace(year=year, month=month, day=min(origin.day, (following - first).days))


def calendar_of(time: xr.DataArray) -> str:
    """The CF calendar of a decoded time coordinate."""
    cal = time.encoding.get("calendar") or time.attrs.get("calendar")
    if cal:
        return str(cal).lower()
    values = time.values
    if values.size and isinstance(values.flat[0], cftime.datetime):
        return values.flat[0].calendar or "standard"
    return "standard"


def to_cftime(values: np.ndarray, calendar: str) -> list[cftime.datetime]:
    """Timestamps as cftime objects of ``calendar`` (datetime64 input is converted)."""
    out = []
    for v in np.asarray(values).ravel():
        if isinstance(v, cftime.datetime):
            out.append(v)
        else:
            ts = pd.Timestamp(v)
            out.append(
                cftime.datetime(
                    ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, calendar=calendar
                )
            )
    return out


#: CF calendar names that mean the same calendar, and the name faextract uses for each.
CALENDAR_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}


def canonical_calendar(name: str) -> str:
    """The one name of a CF calendar (``gregorian`` -> ``standard``, ``365_day`` -> ``noleap``)."""
    name = str(name).lower()
    return CALENDAR_ALIASES.get(name, name)


def days_in_year(year: int, calendar: str) -> int:
    calendar = canonical_calendar(calendar)
    if calendar == "360_day":
        return 360
    if calendar == "noleap":
        return 365
    if calendar == "all_leap":
        return 366
    if calendar == "julian":
        return 366 if year % 4 == 0 else 365
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if calendar == "standard" and year < 1583:
        leap = year % 4 == 0
    return 366 if leap else 365


def season_phase(values: np.ndarray, calendar: str = "standard") -> np.ndarray:
    """Fraction of the calendar year elapsed at each timestamp, in ``[0, 1)``.

    The same day of year gives the same phase in any year; the year length follows the
    calendar (360 for ``360_day``, 365/366 otherwise), so a seasonal encoding built on it is
    exactly periodic across years.
    """
    times = to_cftime(values, calendar)
    out = np.empty(len(times), dtype=np.float64)
    for i, t in enumerate(times):
        cal = t.calendar or calendar
        doy = t.dayofyr - 1 + (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0
        out[i] = doy / days_in_year(t.year, cal)
    return out.reshape(np.shape(values))


def median_step_seconds(values: np.ndarray, count: int = 50) -> float | None:
    """The median spacing of the first ``count`` steps of a time axis, in seconds (None for
    fewer than two steps or values that cannot be subtracted)."""
    if len(values) < 2:
        return None
    try:
        deltas = [values[i + 1] - values[i] for i in range(min(len(values) - 1, count))]
        return float(np.median([pd.Timedelta(d).total_seconds() for d in deltas]))
    except Exception:  # noqa: BLE001 - mixed or undecoded types
        return None


def time_step(time: xr.DataArray) -> str:
    """A human description of the median spacing of a time axis (e.g. ``'1 day'``)."""
    if time.size < 2:
        return "single step"
    sec = median_step_seconds(time.values, count=1000)
    if sec is None:
        return "irregular"
    days = sec / 86400  # calendar months and years vary: a median of 30.5 days is monthly
    if 28 <= days <= 31:
        return "1 month"
    if 359 <= days <= 366:
        return "1 year"
    return _duration(sec)


def _seconds(values: np.ndarray, calendar: str) -> np.ndarray:
    """Timestamps as float seconds since the first one, in their calendar.

    Counted from the first timestamp rather than a fixed epoch: a climatology's dates lie in
    year 0, which a 1970 reference cannot express in calendars without a year zero."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[s]").astype(np.float64)
    first = values.flat[0]
    return np.array([(t - first).total_seconds() for t in values.ravel()], dtype=np.float64)


def time_gaps(time: xr.DataArray, calendar: str = "standard") -> dict | None:
    """Steps more than 1.5x the median step apart (missing days, joined periods), or None.

    ``{"count": n, "largest": "9 days", "after": "2001-02-03 00:00:00"}``: windows that span
    a gap see steps that are not consecutive. Monthly data (28-31 days) has none.
    """
    if time.size < 3:
        return None
    sec = _seconds(time.values, calendar)
    deltas = np.diff(sec)
    step = float(np.median(deltas))
    big = np.nonzero(deltas > 1.5 * step)[0]
    if step <= 0 or big.size == 0:
        return None
    worst = int(big[np.argmax(deltas[big])])
    largest = float(deltas[worst])
    return {
        "count": int(big.size),
        "largest": _duration(largest),
        "after": str(time.values[worst]),
    }


def _duration(seconds: float) -> str:
    """The largest whole unit: ``'9 days'``, ``'30 hours'``, ``'90 s'``."""
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= n and abs(seconds / n - round(seconds / n)) < 1e-6:
            k = round(seconds / n)
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{seconds:g} s"


def check_monotonic(time: xr.DataArray, source: str, sort_time: bool) -> np.ndarray | None:
    """Return a sorting index when ``sort_time`` and times are unsorted; else validate.

    Duplicated or non-increasing times are an error naming the first offending pair, unless
    ``sort_time`` (duplicates are an error even then: which copy is right is unknowable).
    """
    vals = time.values
    order = np.argsort(vals, kind="stable")
    ordered = vals[order]
    dup = np.nonzero(ordered[1:] == ordered[:-1])[0]
    if dup.size:
        raise DataError(f"{source}: time {ordered[dup[0]]} is duplicated")
    if not sort_time:
        for i in range(len(vals) - 1):
            if not vals[i] < vals[i + 1]:
                raise DataError(
                    f"{source}: time is not increasing at position {i + 1}: "
                    f"{vals[i]} then {vals[i + 1]} (use --sort-time to sort)"
                )
        return None
    return None if np.array_equal(order, np.arange(len(order))) else order


_DATE = r"\s*(-?\d{1,4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?\s*"


def date_key(value, *, end: bool = False) -> tuple[int, ...]:
    """``(year, month, day)`` of a period bound: ``1991``, ``"1991-06"``, ``"1991-06-15"`` or
    a date (YAML reads an unquoted ``1991-06-15`` as one). A start without month or day means
    the first of it; an ``end`` keeps only the parts given, so ``2020`` ends with 2020's last
    step (any calendar: no day count is needed)."""
    import datetime
    import re

    if isinstance(value, (datetime.date, cftime.datetime)):
        return (value.year, value.month, value.day)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    m = re.fullmatch(_DATE, value) if isinstance(value, str) else None
    if not m:
        raise DataError(f"expected a date as YYYY, YYYY-MM or YYYY-MM-DD, got {value!r}")
    parts = tuple(int(p) for p in m.groups() if p is not None)
    if not (len(parts) < 2 or 1 <= parts[1] <= 12) or not (len(parts) < 3 or 1 <= parts[2] <= 31):
        raise DataError(f"{value!r} is not a date (month 1-12, day 1-31)")
    return parts if end else parts + (1,) * (3 - len(parts))


def steps_in_period(values: np.ndarray, calendar: str, start, end) -> np.ndarray:
    """Indices of the timestamps between the dates ``start`` and ``end``, both included (see
    :func:`date_key`), in any CF calendar."""
    first, last = date_key(start), date_key(end, end=True)
    keys = [(t.year, t.month, t.day) for t in to_cftime(values, calendar)]
    return np.array([i for i, k in enumerate(keys) if first <= k and k[: len(last)] <= last], dtype=np.int64)
