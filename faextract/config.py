"""Configuration: typed dataclasses loaded from YAML, with ``--set key=value`` overrides.

``configs/default.yaml`` documents every key. A config file only needs the keys it changes;
everything else takes the defaults below. Unknown keys are an error listing the valid ones,
so a typo never silently does nothing. The resolved config is saved with every run and inside
every checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml

from faextract.errors import ConfigError, first_line


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=lambda: ["sample_data/sample_cube.nc"])
    variables: list[str] | None = None
    levels: list[float] | None = None
    dims: dict[str, str] | None = None
    # One value of each non-grid dimension, e.g. {member: 3} (ERA5's expver is combined if unset).
    select: dict[str, str] | None = None
    sort_time: bool = False
    # The last fraction of the time axis is held out for validation (a contiguous range, so
    # validation never sees days adjacent to training days).
    val_fraction: float = 0.15
    # Per-gridpoint climatology removed first: "auto" (monthly means for monthly data, a smooth
    # harmonic fit for finer steps, none for less than a year), "none", "monthly", "dayofyear",
    # "harmonic". Monthly means removed from daily data leave a jump on every first of the
    # month, which an encoder learns as if it were weather.
    climatology: str = "auto"
    # The steps the climatology is fitted on: "train" (the training range), "all" (the whole
    # record; for records of a few years, where a seasonal cycle fitted on part of them takes
    # in slow variability) or [START, END], a reference period (e.g. [1991, 2020]).
    climatology_period: str | list = "train"
    area_weighted: bool = True
    # Precomputed statistics file (from `faextract stats`); computed on the training range if null.
    stats: str | None = None


@dataclass
class TilesConfig:
    window: int = 12
    stride: int = 6
    tile: list[int] | None = None  # [h, w] grid cells; null = whole grid
    halo: int = 0
    edge: str = "pad"


@dataclass
class ModelConfig:
    cell: str = "faconvlstm"
    filters: int = 32
    layers: int = 2
    kernel_size: int = 3
    stem_channels: int = 16
    # Stride-2 stages before the recurrent cells: 2 = a 4x coarser latent grid.
    downsample: int = 2
    embedding_dim: int = 32
    # Extra options for the cell (FAConvLSTM ablation switches, scan mode, ...).
    cell_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "both"  # reconstruct, forecast or both
    # Weight of the coarse reconstruction from the embedding alone: this is what makes the
    # embedding carry the large-scale state rather than ride along unused.
    embedding_loss_weight: float = 1.0
    # The embedding decoder: pooled fields on this lat x lon grid (capped at the data's grid),
    # at the current step and this many steps ahead, decoded linearly from z_t alone. The
    # horizons make z keep what the recurrent memory knows of the future (leads 1-3 beat the
    # EOFs of a snapshot on the benchmark); see README "Representation quality".
    embedding_grid: list[int] = field(default_factory=lambda: [12, 24])
    embedding_horizon: int = 3
    # Steps back (lags >= 1) the embedding decoder also reconstructs from z_t: z then keeps
    # what the recurrent memory saw earlier in its window (an oscillation's phase), which a
    # snapshot's EOFs cannot carry. [] = none.
    embedding_past: list[int] = field(default_factory=list)
    # End the embedding head with LayerNorm (per-step normalization of z): off, because it
    # removes each step's amplitude and left components near constant values.
    embedding_norm: bool = False
    # Pool the last hidden state onto this lat x lon grid (capped at the latent grid) before
    # the linear map to z, so z knows where anomalies are; null = global mean and max pooling,
    # with which a planted ENSO box was not linearly recoverable (held-out R² ~0).
    head_grid: list[int] | None = field(default_factory=lambda: [18, 36])
    # Dropout on the pooled features the head maps to z (training only; 0 = off).
    head_dropout: float = 0.0
    # Factorize the head's map to z into this many (spatial pattern x channel mix) products per
    # component (0 = one full linear map; only with head_grid): far fewer weights to fit.
    head_rank: int = 0
    # Gaussian noise on z as the decoders hear it while training, in units of each
    # component's standard deviation over the batch (an information bottleneck against
    # memorizing the training months; 0 = off). z itself, and everything embed writes, is clean.
    embedding_noise: float = 0.0
    # Add to z_t a linear function of the input at t averaged onto embedding_grid, an EOF-like
    # path beside the recurrent one: none, linear (its own map) or tied (the transpose of the
    # embedding decoder's map for the present step: a tied linear autoencoder, EOF-like).
    input_skip: str = "none"
    # The first k components of z are the leading EOF principal components of the input pooled
    # on eof_grid (area-weighted, fitted on the training range before training, frozen);
    # the head learns the other embedding_dim - k, trained to carry what the EOFs miss. EOFs
    # transfer to new years better than a network fitted to a short record (README
    # "Representation quality"). Whole-grid windows only (tiles.tile: null); 0 = off.
    eof_components: int = 0
    # The lat x lon grid the input is averaged onto for those EOFs (capped at the data's grid).
    eof_grid: list[int] = field(default_factory=lambda: [36, 72])
    # The next m components of z: the first m of those EOF principal components eof_lag steps
    # back (1 <= eof_lag < tiles.window), which tell an oscillation's rise from its fall (on
    # the benchmark cubes, the leading one 11 months back raised the unseen index at lead 3
    # more than 8 more EOFs did; README "Representation quality"). 0 = off.
    eof_lag_components: int = 0
    eof_lag: int = 0
    # VICReg-style variance/covariance term on z that keeps its components in use (effective
    # rank 4.6 -> 8.1 of 16 on the benchmark, skill kept; at 0.1 lead-3 skill fell); 0 = off.
    decorrelation_weight: float = 0.02
    clusters: int = 0  # DEC clustering head with K clusters; 0 = off
    cluster_weight: float = 0.1
    cluster_start_epoch: int = 1


@dataclass
class TrainConfig:
    epochs: int = 10
    # A budget in optimizer steps instead (0 = off): the run takes as many epochs as that needs,
    # so a short record trains as long as a long one (11 years of monthly data: 13 steps an epoch).
    steps: int = 0
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    early_stopping: int = 0  # patience in epochs; 0 = off
    # The validation number that picks best.pt and drives early stopping: "loss" (the job's
    # validation loss: the encoder's reconstruction MSE) or "embedding" (the encoder's
    # embedding-decoder loss: how well z, which embed writes, generalizes to new time).
    best_by: str = "loss"
    # Decay of an exponential moving average of the weights, per optimizer step (0 = off;
    # e.g. 0.99 averages over the last ~100 steps): validation, best.pt and embed use the
    # average (faextract.train.averaging).
    ema: float = 0.0
    # Probability that a training window is mixed with another window of its batch (same
    # spatial tile): cos(theta) x_a + sin(theta) x_b, new anomaly states against memorizing a
    # short record (faextract.train.mixing); 0 = off. Encoder job only.
    mixup: float = 0.0
    # Probability that a training window's anomalies are negated (-x), which pushes z towards
    # an odd function of the anomalies (EOF-like); 0 = off.
    flip: float = 0.0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    bf16: bool = True  # autocast on CUDA only
    compile: bool = False
    # torch.compile mode for the cells: default, reduce-overhead, max-autotune,
    # max-autotune-no-cudagraphs
    compile_mode: str = "default"
    num_workers: int = 0
    log_every: int = 10  # steps between metric rows
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = end of epoch only
    # Start from this checkpoint's weights (fine-tuning; same job and architecture), with a
    # fresh optimizer and schedule; null = random initialization.
    init: str | None = None


@dataclass
class CodecConfig:
    """The learned compressor a ``job: compressor`` run trains (``faextract compress
    --checkpoint``): a :class:`~faextract.compress.model.BlockCodec` over blocks of 8 steps of
    one variable, each normalized by its own range."""

    # Channels of the encoder's 2-D stages, its 3-D stages, and the latent; the bundled
    # compressor uses [8, 16, 24, 32] (0.47 M parameters), the paper's are [16, 32, 48, 64].
    widths: list[int] = field(default_factory=lambda: [8, 16, 24, 32])
    sr_blocks: int = 2  # ConvNeXt blocks of the super-resolution decoder
    # Rate-distortion trade-off: loss = bits per value + lam x MSE (values in units of the
    # block's range). Larger: a closer prediction, more latent bits.
    lam: float = 3000.0
    # Training crops of each block (grid cells, a multiple of 16; the whole grid when smaller).
    crop: int = 64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tiles: TilesConfig = field(default_factory=TilesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    # What `faextract train` trains: the feature encoder (`model`) or a compressor (`codec`).
    job: str = "encoder"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        valid = ", ".join(f"{where}.{n}" if where else n for n in sorted(names))
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value or {}, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(value, typ, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(value, typ, key: str):
    """Light type checking: numbers, bools and strings must be what the key expects."""
    if value is None:
        return None
    text = str(typ)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if text.startswith("list") and not isinstance(value, list):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return [value]  # `paths: cube.nc` means a list of one
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if text.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "cell_options":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """``["model.cell=convlstm", "train.epochs=3"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected KEY=VALUE like train.epochs=3, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({err})") from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Defaults, then the YAML file (which may ``extends: other.yaml``; a bundled config may be
    named: ``"sample"``), then ``--set`` overrides; every value is then checked
    (:func:`validate`) before anything runs. Relative data paths resolve against the working
    directory, then the config file's folder, then the bundled data (as the command line does)."""
    from faextract.paths import resolve, resolve_config

    data: dict = {}
    if path is not None:
        path = resolve_config(os.fspath(path))
        data = _read_yaml(path, seen=())
    data = _deep_merge(data, parse_overrides(overrides))
    config = validate(_build(Config, data, ""))
    config.data.paths = [resolve(p, path) for p in config.data.paths]
    if config.data.stats:
        config.data.stats = resolve(config.data.stats, path)
    if config.train.init:
        config.train.init = resolve(config.train.init, path)
    return config


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
#: What ``faextract train`` can train (the config's ``job``).
JOBS = ("encoder", "compressor")


def check_device(value: str, key: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; anything else names the choices."""
    import re

    if not re.fullmatch(DEVICE_PATTERN, str(value)):
        raise ConfigError(f"{key}: expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def check_period(value, key: str):
    """``train``, ``all`` or ``[START, END]`` (dates as YYYY, YYYY-MM or YYYY-MM-DD); returns
    it with dates as text (YAML reads an unquoted 1991-01-01 as a date, which JSON cannot
    hold: the config travels in checkpoints and stores)."""
    import datetime

    from faextract.data.time import date_key
    from faextract.errors import DataError

    if value in ("train", "all"):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            first, last = date_key(value[0]), date_key(value[1], end=True)
        except DataError as err:
            raise ConfigError(f"{key}: {err}") from None
        _need(first[: len(last)] <= last, key, "a START no later than its END", value)
        return [v.isoformat() if isinstance(v, datetime.date) else v for v in value]
    _need(False, key, "train, all or [START, END] (dates as YYYY, YYYY-MM or YYYY-MM-DD)", value)


def _need(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {what}, got {value!r}")


def _grid(value, key: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    _need(ok, key, "[lat cells, lon cells], two integers >= 1" + (" or null" if optional else ""), value)


def validate(config: Config) -> Config:
    """Check every key's range and choices; a :class:`ConfigError` names the key, what it
    expects and what it got. Cell options are checked against the cell's constructor."""
    import inspect
    import math

    from faextract.data.stats import CLIMATOLOGIES
    from faextract.models.registry import CELLS

    d, t, m, tr = config.data, config.tiles, config.model, config.train
    _need(bool(d.paths), "data.paths", "at least one file, glob or store", d.paths)
    _need(0 <= d.val_fraction < 1, "data.val_fraction", "a fraction in [0, 1)", d.val_fraction)
    _need(d.climatology in CLIMATOLOGIES, "data.climatology", f"one of {', '.join(CLIMATOLOGIES)}",
          d.climatology)  # fmt: skip
    d.climatology_period = check_period(d.climatology_period, "data.climatology_period")
    _need(t.window >= 1, "tiles.window", "an integer >= 1", t.window)
    _need(t.stride >= 1, "tiles.stride", "an integer >= 1", t.stride)
    _need(t.halo >= 0, "tiles.halo", "an integer >= 0", t.halo)
    _need(t.edge in ("pad", "shift"), "tiles.edge", "pad or shift", t.edge)
    _grid(t.tile, "tiles.tile", optional=True)
    _need(m.cell in CELLS, "model.cell", f"one of {', '.join(CELLS)}", m.cell)
    for key in ("filters", "layers", "kernel_size", "stem_channels", "embedding_dim"):
        _need(getattr(m, key) >= 1, f"model.{key}", "an integer >= 1", getattr(m, key))
    _need(m.downsample >= 0, "model.downsample", "an integer >= 0", m.downsample)
    _need(m.objective in ("reconstruct", "forecast", "both"), "model.objective",
          "reconstruct, forecast or both", m.objective)  # fmt: skip
    _need(m.clusters == 0 or m.clusters >= 2, "model.clusters", "0 (off) or >= 2", m.clusters)
    for key in ("embedding_loss_weight", "cluster_weight", "decorrelation_weight"):
        v = getattr(m, key)
        _need(math.isfinite(v) and v >= 0, f"model.{key}", "a number >= 0", v)
    _need(m.cluster_start_epoch >= 0, "model.cluster_start_epoch", "an integer >= 0",
          m.cluster_start_epoch)  # fmt: skip
    _grid(m.embedding_grid, "model.embedding_grid")
    _grid(m.head_grid, "model.head_grid", optional=True)
    _grid(m.eof_grid, "model.eof_grid")
    _need(m.input_skip in ("none", "linear", "tied") or isinstance(m.input_skip, bool),
          "model.input_skip", "none, linear or tied", m.input_skip)  # fmt: skip
    _need(m.head_rank >= 0, "model.head_rank", "an integer >= 0 (0 = a full linear map)", m.head_rank)
    _need(0 <= m.eof_components < m.embedding_dim, "model.eof_components",
          f"an integer in [0, embedding_dim - 1 = {m.embedding_dim - 1}]", m.eof_components)  # fmt: skip
    _need(not (m.eof_components and m.input_skip not in ("none", False)), "model.eof_components",
          "0 with model.input_skip (the two cannot be combined)", m.eof_components)  # fmt: skip
    _need(0 <= m.eof_lag_components <= m.eof_components, "model.eof_lag_components",
          f"an integer in [0, eof_components = {m.eof_components}]", m.eof_lag_components)  # fmt: skip
    _need(m.eof_components + m.eof_lag_components < m.embedding_dim, "model.eof_lag_components",
          f"fewer than embedding_dim - eof_components = {m.embedding_dim - m.eof_components} "
          "(the head must learn at least one component)", m.eof_lag_components)  # fmt: skip
    _need(not m.eof_lag_components or 1 <= m.eof_lag < t.window, "model.eof_lag",
          f"an integer in [1, tiles.window - 1 = {t.window - 1}] with eof_lag_components",
          m.eof_lag)  # fmt: skip
    _need(not (m.eof_components and t.tile), "model.eof_components",
          "0 with spatial tiles (tiles.tile; the EOFs are of the whole grid)", m.eof_components)  # fmt: skip
    _need(math.isfinite(m.embedding_noise) and m.embedding_noise >= 0, "model.embedding_noise",
          "a number >= 0", m.embedding_noise)  # fmt: skip
    _need(math.isfinite(m.head_dropout) and 0 <= m.head_dropout < 1, "model.head_dropout",
          "a number in [0, 1)", m.head_dropout)  # fmt: skip
    _need(m.embedding_horizon >= 0, "model.embedding_horizon", "an integer >= 0",
          m.embedding_horizon)  # fmt: skip
    _need(isinstance(m.embedding_past, list | tuple)
          and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v < t.window
                  for v in m.embedding_past)
          and len(set(m.embedding_past)) == len(m.embedding_past),
          "model.embedding_past", f"a list of distinct lags in [1, tiles.window - 1 = "
          f"{t.window - 1}]", m.embedding_past)  # fmt: skip
    cell = CELLS[m.cell]
    # every constructor argument of the cell and its bases, with its default (subclass wins)
    defaults = {
        name: p.default
        for klass in reversed(cell.__mro__)
        if "__init__" in vars(klass)
        for name, p in inspect.signature(klass.__init__).parameters.items()
    }
    accepted = set(defaults) - {"self", "args", "kwargs", "filters", "kernel_size", "padding", "data_format",
         "return_sequences", "in_channels", "embedding_dim", "periodic", "seasonal_period",
         "embedding_norm", "head_grid", "head_dropout", "head_rank", "temporal_causal"}  # fmt: skip
    for key in m.cell_options:
        if key not in accepted:
            raise ConfigError(
                f"model.cell_options: {key!r} is not an option of the {m.cell} cell (it takes "
                f"{', '.join(sorted(accepted))}); options of another cell, inherited from an "
                "extended config, are dropped with model.cell_options={}"
            )
    option = {**defaults, **m.cell_options}.get
    if option("temporal_attention") and option("temporal_heads"):
        learned = m.embedding_dim - m.eof_components - m.eof_lag_components
        heads = option("temporal_heads")
        _need(learned % heads == 0, "model.embedding_dim",
              f"embedding_dim - eof_components - eof_lag_components (the components the head "
              f"makes: {learned}) to be a multiple of the {m.cell} cell's temporal_heads "
              f"({heads})", m.embedding_dim)  # fmt: skip
    _need(tr.epochs >= 1, "train.epochs", "an integer >= 1", tr.epochs)
    _need(tr.steps >= 0, "train.steps", "an integer >= 0 (0 = use train.epochs)", tr.steps)
    _need(tr.batch_size >= 1, "train.batch_size", "an integer >= 1", tr.batch_size)
    _need(math.isfinite(tr.lr) and tr.lr > 0, "train.lr", "a number > 0", tr.lr)
    for key in ("weight_decay", "grad_clip"):
        v = getattr(tr, key)
        _need(math.isfinite(v) and v >= 0, f"train.{key}", "a number >= 0", v)
    _need(tr.best_by in ("loss", "embedding"), "train.best_by", "loss or embedding", tr.best_by)
    _need(not (config.job == "compressor" and tr.best_by == "embedding"), "train.best_by",
          "loss with job: compressor (it has no embedding)", tr.best_by)  # fmt: skip
    _need(math.isfinite(tr.ema) and 0 <= tr.ema < 1, "train.ema",
          "a number in [0, 1) (0 = off)", tr.ema)  # fmt: skip
    _need(math.isfinite(tr.mixup) and 0 <= tr.mixup <= 1, "train.mixup",
          "a probability in [0, 1] (0 = off)", tr.mixup)  # fmt: skip
    _need(not (config.job == "compressor" and tr.mixup), "train.mixup",
          "0 with job: compressor (it mixes no windows)", tr.mixup)  # fmt: skip
    _need(math.isfinite(tr.flip) and 0 <= tr.flip <= 1, "train.flip",
          "a probability in [0, 1] (0 = off)", tr.flip)  # fmt: skip
    _need(not (config.job == "compressor" and tr.flip), "train.flip",
          "0 with job: compressor (it flips no windows)", tr.flip)  # fmt: skip
    for key in ("warmup_steps", "early_stopping", "num_workers", "checkpoint_every"):
        _need(getattr(tr, key) >= 0, f"train.{key}", "an integer >= 0", getattr(tr, key))
    _need(tr.log_every >= 1, "train.log_every", "an integer >= 1", tr.log_every)
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    _need(tr.compile_mode in modes, "train.compile_mode", " or ".join(modes), tr.compile_mode)
    check_device(tr.device, "train.device")
    _need(config.job in JOBS, "job", " or ".join(JOBS), config.job)
    _need(not (config.job == "compressor" and tr.compile), "train.compile",
          "false with job: compressor (it compiles the encoder's cells)", tr.compile)  # fmt: skip
    c = config.codec
    ok = isinstance(c.widths, list) and len(c.widths) == 4
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in c.widths)
    _need(ok, "codec.widths", "four integers >= 1", c.widths)
    _need(c.sr_blocks >= 0, "codec.sr_blocks", "an integer >= 0", c.sr_blocks)
    _need(math.isfinite(c.lam) and c.lam > 0, "codec.lam", "a number > 0", c.lam)
    _need(c.crop >= 16 and c.crop % 16 == 0, "codec.crop", "a multiple of 16", c.crop)
    return config



def _read_yaml(path: str, seen: tuple) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such config file")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    if os.path.realpath(path) in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent:
        base = _read_yaml(
            os.path.join(os.path.dirname(path), parent), seen + (os.path.realpath(path),)
        )
        data = _deep_merge(base, data)
    return data


def save_config(config: Config, path: str | os.PathLike) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
