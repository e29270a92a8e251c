"""What a run trains on: the cube opened from the config, its time split, and the
normalization statistics (resumed, loaded, or computed on the training range by rank 0)."""

from __future__ import annotations

from dataclasses import dataclass

import xarray as xr

from faextract.checkpoint import Checkpoint
from faextract.config import Config
from faextract.data.cube import Cube
from faextract.data.dataset import CubeSource
from faextract.data.selection import parse_select
from faextract.data.stats import StatsOptions, compute_stats, load_stats, resolve_climatology
from faextract.data.time import steps_in_period, to_cftime
from faextract.errors import DataError
from faextract.runtime import distributed
from faextract.train.plan import split_time


@dataclass
class TrainingData:
    """The cube a run trains on and how its time axis is split."""

    source: CubeSource  # the whole cube, reopened by reader processes
    cube: Cube
    train_range: tuple[int, int]
    val_range: tuple[int, int] | None

    def part(self, steps: tuple[int, int]) -> tuple[CubeSource, Cube]:
        return (
            CubeSource(**{**self.source.__dict__, "time_range": steps}),
            self.cube.isel_time(slice(*steps)),
        )


def open_data(config: Config, say) -> TrainingData:
    d = config.data
    source = CubeSource(
        paths=tuple(d.paths),
        variables=tuple(d.variables) if d.variables else None,
        levels=tuple(d.levels) if d.levels else None,
        dims=dict(d.dims or {}),
        sort_time=d.sort_time,
        select=parse_select(d.select),
    )
    cube = source.open()
    say(f"opened {cube.source_label}: {cube.shape[0]} steps, {len(cube.channels)} channels, "
        f"{cube.shape[2]}x{cube.shape[3]} grid")  # fmt: skip
    try:
        train_range, val_range = split_time(cube.shape[0], d.val_fraction, config.tiles.window)
    except DataError as err:
        raise DataError(f"{cube.source_label}: {err}") from None
    return TrainingData(source, cube, train_range, val_range)


def statistics(config: Config, data: TrainingData, ckpt: Checkpoint | None, info, say) -> xr.Dataset:
    """The resumed run's statistics, the configured file's, or computed on the training range
    by rank 0 and shared."""
    if ckpt is not None:
        return ckpt.stats
    d = config.data
    if d.stats:
        return load_stats(d.stats)
    stats = None
    if info.is_main:
        _, train_cube = data.part(data.train_range)
        reference, fitted_on = climatology_reference(d.climatology_period, data)
        kind, why = resolve_climatology(d.climatology, reference or train_cube)
        say(f"statistics over the training steps {data.train_range[0]}..{data.train_range[1] - 1}; "
            f"climatology {kind}" + (f" ({why})" if why else "")
            + (f", fitted on {fitted_on}" if kind != "none" and reference is not None else ""))  # fmt: skip
        if kind != "none" and reference is None:
            notice = short_record_notice(train_cube)
            if notice:
                say(notice)
        options = StatsOptions(area_weighted=d.area_weighted, climatology=kind)
        stats = compute_stats(train_cube, options, reference=reference)
    return distributed.broadcast_object(stats, info)


def climatology_reference(period, data: TrainingData) -> tuple[Cube | None, str]:
    """The steps ``data.climatology_period`` fits the climatology on (None: the training
    range) and how to say which."""
    cube = data.cube
    if period == "train":
        return None, "the training steps"
    if period == "all":
        return cube, f"all {cube.shape[0]} steps (data.climatology_period: all)"
    steps = steps_in_period(cube.time.values, cube.calendar, *period)
    first, last = cube.time.values[[0, -1]]
    if steps.size == 0:
        raise DataError(
            f"data.climatology_period {list(period)}: no step of {cube.source_label} lies in it "
            f"(its steps run from {first} to {last})"
        )
    return (
        cube.isel_time(slice(int(steps[0]), int(steps[-1]) + 1)),
        f"{steps.size} steps, {cube.time.values[steps[0]]} to {cube.time.values[steps[-1]]} "
        "(data.climatology_period)",
    )


#: Below this many years of training steps, a seasonal cycle fitted on them alone takes in
#: slow (interannual) variability, and ``train`` says so.
SHORT_RECORD_YEARS = 3


def short_record_notice(train_cube: Cube) -> str | None:
    """A one-line notice when the training range is too short for its own climatology."""
    first, last = to_cftime(train_cube.time.values[[0, -1]], train_cube.calendar)
    years = (last - first).total_seconds() / 86400 / 365.25
    if years >= SHORT_RECORD_YEARS:
        return None
    return (
        f"notice: the climatology is fitted on {years:.1f} years of training steps, which holds "
        "slow variability in part (an ENSO cycle is 2-7 years); data.climatology_period: all "
        "fits it on the whole record"
    )
