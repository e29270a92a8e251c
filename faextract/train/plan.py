"""What a training run is made of, decided before anything is built: the time split, the
model's arguments from the config and the data, the window plan, the learning-rate schedule,
the run directory, and whether a checkpoint may be resumed under the current config."""

from __future__ import annotations

import math
from pathlib import Path

from faextract.checkpoint import Checkpoint
from faextract.config import Config
from faextract.data.tiling import TileSpec
from faextract.errors import ConfigError, DataError, FaextractError
from faextract.outputs import RUN_FILES, is_run_dir

#: One run per directory: a second process would write every metrics row twice.
LOCK_FILE = ".faextract-lock"


def split_time(
    n: int, val_fraction: float, window: int
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Training and validation ranges: the last ``val_fraction`` of the steps is held out."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, window)
    if n - n_val < window:
        raise DataError(
            f"the cube has {n} time steps: too few for a training window of {window} "
            f"plus {n_val} validation steps (lower tiles.window or data.val_fraction)"
        )
    return (0, n - n_val), ((n - n_val, n) if n_val else None)


def seasonal_period(cube) -> float:
    """Steps per year from the cube's median time step (365 for daily noleap, 12 for monthly)."""
    from faextract.data.time import days_in_year, median_step_seconds

    step = median_step_seconds(cube.time.values)
    if step is None or step <= 0:
        return 365.0
    return days_in_year(2001, cube.calendar) / (step / 86400)


def model_args(config: Config, cube) -> dict:
    """The :class:`~faextract.models.autoencoder.ClimateAutoencoder` arguments for ``cube``."""
    from faextract.models.autoencoder import skip_mode

    m = config.model
    return dict(
        in_channels=len(cube.channels),
        cell=m.cell,
        filters=m.filters,
        layers=m.layers,
        kernel_size=m.kernel_size,
        stem_channels=m.stem_channels,
        downsample=m.downsample,
        embedding_dim=m.embedding_dim,
        cell_options=dict(m.cell_options),
        objective=m.objective,
        clusters=m.clusters,
        periodic=bool(cube.periodic),
        seasonal_period=float(seasonal_period(cube)),
        embedding_grid=tuple(
            min(g, n) for g, n in zip(m.embedding_grid, cube.shape[2:], strict=True)
        ),
        embedding_horizon=m.embedding_horizon,
        embedding_past=tuple(int(v) for v in m.embedding_past),
        embedding_norm=m.embedding_norm,
        # z_t from steps <= t only (checkpoints from before this was recorded: False)
        causal_embedding=True,
        head_grid=_head_grid(m.head_grid, cube.shape[2:], 2**m.downsample),
        head_dropout=float(m.head_dropout),
        embedding_noise=float(m.embedding_noise),
        head_rank=int(m.head_rank),
        input_skip=skip_mode(m.input_skip),
        eof_components=int(m.eof_components),
        eof_lag=int(m.eof_lag),
        eof_lag_components=int(m.eof_lag_components),
        eof_grid=tuple(min(g, n) for g, n in zip(m.eof_grid, cube.shape[2:], strict=True)),
    )


def _head_grid(grid, shape, multiple: int) -> tuple[int, int] | None:
    """The head's pooling grid, at most the latent grid (null: global pooling)."""
    if not grid:
        return None
    return tuple(max(1, min(g, -(-n // multiple))) for g, n in zip(grid, shape, strict=True))


def tile_spec(config: Config, multiple: int) -> TileSpec:
    t = config.tiles
    return TileSpec(
        window=t.window,
        stride=t.stride,
        tile=tuple(t.tile) if t.tile else None,
        halo=t.halo,
        multiple=multiple,
        edge=t.edge,
    )


def lr_lambda(warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% at ``total``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def first_difference(old: dict, new: dict, ignore=()) -> tuple[str, object, object] | None:
    """``(key, old value, new value)`` of the first argument (in key order) two models differ
    in, or None; a list and a tuple of the same values (a config's and a checkpoint's) agree."""

    def same(v):
        return tuple(v) if isinstance(v, list) else v

    for key in sorted(set(old) | set(new)):
        if key not in ignore and same(old.get(key)) != same(new.get(key)):
            return key, old.get(key), new.get(key)
    return None


def check_same_model(ckpt: Checkpoint, args: dict, what: str = "model") -> None:
    """Refuse to resume ``ckpt`` under a config that builds another network."""
    diff = first_difference(ckpt.model_args, args)
    if diff is not None:
        key, old, new = diff
        raise FaextractError(
            f"--resume: checkpoint is incompatible with the config: {what} {key} is "
            f"{old!r} in the checkpoint, {new!r} now"
        )


def check_resume_compatible(ckpt: Checkpoint, args: dict, channels, select: dict) -> None:
    """Refuse to resume ``ckpt`` under a config that builds another model or reads other data."""
    from faextract.data.selection import parse_select

    check_same_model(ckpt, args)
    if list(ckpt.channels) != list(channels):
        raise FaextractError(
            f"--resume: checkpoint channels {list(ckpt.channels)} differ from the data's {list(channels)}"
        )
    before = parse_select(ckpt.trained_data.get("select"))
    if before != select:
        raise FaextractError(
            f"--resume: the checkpoint was trained with data.select {before or 'unset'}, "
            f"the config now has {select or 'unset'}"
        )


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a directory of other files; a run's directory needs ``resume`` or
    ``overwrite``, which removes only the files a run writes (:data:`RUN_FILES`)."""
    last = run_dir / "last.pt"
    if resume:
        if not last.exists():
            raise FaextractError(f"--resume: no checkpoint {last} to resume from")
        return
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if names:
        if not is_run_dir(run_dir):
            raise FaextractError(
                f"{run_dir}: holds files that are not a faextract run ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}); choose a new or empty run directory"
            )
        if not overwrite:
            raise FaextractError(
                f"{run_dir}: run directory is not empty (use --resume or --overwrite)"
            )
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
