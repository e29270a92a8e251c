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
        kind, why = resolve_climatology(d.climatology, train_cube)
        say(f"statistics over the training steps {data.train_range[0]}..{data.train_range[1] - 1}; "
            f"climatology {kind}" + (f" ({why})" if why else ""))  # fmt: skip
        stats = compute_stats(train_cube, StatsOptions(area_weighted=d.area_weighted, climatology=kind))
    return distributed.broadcast_object(stats, info)
