"""The input side of an evaluation: anomaly indices and fields from the cube the stores embed.

:func:`read_inputs` streams the cube once, in time blocks, and keeps

- every requested box index: the ``cos(lat)``-weighted mean over a lat/lon box of one
  variable (channel), as an anomaly (:mod:`faextract.evaluate.climatology`);
- a coarse copy of every channel (block means of at most ``max_cells`` cells per channel)
  from which the standardized anomaly *field* ``(T, P)`` is formed: each channel's anomalies
  divided by their area-weighted standard deviation, weighted by ``sqrt(cos lat)``, all
  channels side by side. The EOF baseline, the random baseline and the automatic EOF targets
  are computed on it.

Memory is ``T x channels x max_cells`` floats whatever the grid (4096 cells per channel keep a
40-year daily record of five variables near 2 GB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from faextract.data.boxes import box_mask
from faextract.data.cube import Cube
from faextract.errors import DataError
from faextract.evaluate.baselines import leading_eofs
from faextract.evaluate.climatology import Calendar, anomalies

#: Cells per channel kept for fields (EOFs and baselines).
MAX_CELLS = 4096
#: Steps read at a time.
READ_BLOCK = 256


@dataclass(frozen=True)
class IndexSpec:
    """A box-mean anomaly index: ``name`` of ``variable`` over (lat0, lat1, lon0, lon1)."""

    name: str
    variable: str
    box: tuple[float, float, float, float]

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """``NAME=VAR:lat0:lat1,lon0:lon1`` (longitudes in any convention; lon0 > lon1 crosses
        the date line, e.g. ``160:-150``)."""
        m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*([^:]+):([^:,]+):([^:,]+),([^:,]+):([^:,]+)\s*", text)
        if not m:
            raise DataError(
                f"--index {text!r}: expected NAME=VAR:lat0:lat1,lon0:lon1, e.g. "
                "nino34=sst:-5:5,190:240"
            )
        try:
            box = tuple(float(v) for v in m.groups()[2:])
        except ValueError:
            raise DataError(f"--index {text!r}: the box bounds must be numbers") from None
        if not all(np.isfinite(box)) or not (-90 <= min(box[:2]) and max(box[:2]) <= 90):
            raise DataError(f"--index {text!r}: latitudes must lie in [-90, 90]")
        if box[0] >= box[1]:
            raise DataError(f"--index {text!r}: lat0 must be below lat1")
        return cls(m.group(1), m.group(2).strip(), box)  # type: ignore[arg-type]


@dataclass
class InputData:
    """What :func:`read_inputs` keeps of a cube; see the module docstring."""

    time: np.ndarray
    cal: Calendar
    channels: tuple[str, ...]
    field: np.ndarray  # (T, P) standardized, sqrt(cos lat)-weighted anomalies, NaN-free
    slices: dict[str, slice]  # each channel's columns of ``field``
    indices: dict[str, np.ndarray] = field(default_factory=dict)  # (T,) anomaly indices
    coarse_shape: tuple[int, int] = (0, 0)


def _coarsen(block: np.ndarray, f: int) -> np.ndarray:
    """NaN-aware ``f x f`` block means of ``(T, C, H, W)`` (edges padded with NaN)."""
    if f == 1:
        return block
    T, C, H, W = block.shape
    h, w = -(-H // f), -(-W // f)
    pad = np.full((T, C, h * f, w * f), np.nan, dtype=np.float32)
    pad[:, :, :H, :W] = block
    pad = pad.reshape(T, C, h, f, w, f)
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(pad, axis=(3, 5))


class _quiet:
    """Silences numpy's 'mean of empty slice' for all-NaN cells (they stay NaN)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def read_inputs(
    cube: Cube,
    indices: list[IndexSpec] = (),
    *,
    steps: np.ndarray | None = None,
    max_cells: int = MAX_CELLS,
    progress=None,
) -> InputData:
    """Read ``cube`` (its time ``steps``, default all) into :class:`InputData`."""
    T_all, C, H, W = cube.shape
    steps = np.arange(T_all) if steps is None else np.asarray(steps)
    masks = _index_masks(cube, indices)
    f = max(1, int(np.ceil(np.sqrt(H * W / max_cells))))
    coarse, raw_idx = _read(cube, steps, masks, f, progress)
    cal = Calendar.of(cube.time.values[steps], cube.calendar)
    field, slices = _weighted_anomalies(cube, coarse, cal, f)
    data = InputData(
        time=cube.time.values[steps],
        cal=cal,
        channels=tuple(cube.channels),
        field=field,
        slices=slices,
        coarse_shape=coarse.shape[-2:],
    )
    for name, series in raw_idx.items():
        if not np.isfinite(series).any():
            raise DataError(f"--index {name}: the box has no valid value at any time")
        data.indices[name] = anomalies(series[:, None], cal)[:, 0]
    return data


def _index_masks(cube: Cube, indices) -> dict[str, tuple[int, np.ndarray]]:
    """``{name: (channel, box mask (H, W))}``; a missing variable or an empty box is an error."""
    lat, lon = cube.lat, cube.lon
    masks = {}
    for spec in indices:
        if spec.variable not in cube.channels:
            raise DataError(
                f"--index {spec.name}: the input has no variable {spec.variable!r} "
                f"(it has {', '.join(cube.channels)})"
            )
        m = box_mask(lat, lon, spec.box)
        if not m.any():
            raise DataError(
                f"--index {spec.name}: the box {spec.box} holds no grid cell (the grid spans "
                f"lat {lat.min():g}..{lat.max():g}, lon {lon.min():g}..{lon.max():g})"
            )
        masks[spec.name] = (cube.channels.index(spec.variable), m)
    return masks


def _read(cube: Cube, steps: np.ndarray, masks: dict, f: int, progress):
    """The fields coarsened by ``f`` ``(S, C, h, w)`` and each index's raw box mean ``(S,)``,
    read in contiguous runs of the wanted steps, block by block."""
    _, C, H, W = cube.shape
    coslat = np.cos(np.deg2rad(cube.lat)).clip(min=0.0)[:, None] * np.ones((1, W))
    coarse = np.empty((steps.size, C, -(-H // f), -(-W // f)), dtype=np.float32)
    raw_idx = {name: np.empty(steps.size) for name in masks}
    task = progress.start("reading input", total=steps.size) if progress else None
    pos = 0
    while pos < steps.size:
        t0 = int(steps[pos])
        run = 1
        while pos + run < steps.size and steps[pos + run] == t0 + run and run < READ_BLOCK:
            run += 1
        block = cube.read(t0, t0 + run)  # (run, C, H, W)
        coarse[pos : pos + run] = _coarsen(block, f)
        for name, (c, m) in masks.items():
            vals = block[:, c][:, m]
            wts = np.broadcast_to(coslat[m], vals.shape)
            ok = np.isfinite(vals)
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_idx[name][pos : pos + run] = (np.where(ok, vals, 0) * wts).sum(1) / (
                    wts * ok
                ).sum(1)
        pos += run
        if task is not None:
            progress.advance(task, run)
    if task is not None:
        progress.finish(task)
    return coarse, raw_idx


def _weighted_anomalies(cube: Cube, coarse: np.ndarray, cal, f: int):
    """Each variable's anomalies on the coarse grid, sqrt(cos lat) weighted and scaled to unit
    mean variance, side by side ``(S, cells)``, and each variable's slice of the columns."""
    S, _, H_c, w = coarse.shape
    H = cube.shape[2]
    lat_c = _coarsen(cube.lat[None, None, :, None] * np.ones((1, 1, H, 1), np.float32), f)[0, 0, :, 0]
    wlat = np.sqrt(np.cos(np.deg2rad(lat_c)).clip(min=0.0))[:, None] * np.ones((1, w))
    parts, slices, start = [], {}, 0
    for c, name in enumerate(cube.channels):
        an = anomalies(coarse[:, c].reshape(S, -1), cal)
        keep = np.isfinite(an).mean(axis=0) > 0.5  # cells valid most of the time
        an = np.nan_to_num(an[:, keep])
        wt = wlat.reshape(-1)[keep]
        scale = np.sqrt((an**2 * wt**2).sum() / max((wt**2).sum() * S, 1e-300))
        if not keep.any() or scale <= 0:
            raise DataError(f"{cube.source_label}: variable {name!r} has no variability to evaluate")
        parts.append(an * wt / scale)
        slices[name] = slice(start, start + int(keep.sum()))
        start += int(keep.sum())
    return np.concatenate(parts, axis=1), slices


def eof_targets(data: InputData, n: int = 5) -> dict[str, np.ndarray]:
    """The leading ``n`` principal components of each channel's anomalies over the whole
    record, unit variance: ``{"VAR_pc1": (T,), ...}`` (signs are arbitrary; R^2 ignores them)."""
    out = {}
    for name, sl in data.slices.items():
        x = data.field[:, sl]
        x = x - x.mean(axis=0)
        eofs = leading_eofs(x, n)
        pcs = x @ eofs
        for i in range(pcs.shape[1]):
            s = pcs[:, i].std()
            out[f"{name}_pc{i + 1}"] = pcs[:, i] / s if s > 0 else pcs[:, i]
    return out
