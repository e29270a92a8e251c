"""The store side of an evaluation: an embeddings store as a feature matrix plus what made it."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from faextract.errors import DataError, FaextractError

TILE_MODES = ("concat", "mean")


@dataclass
class StoreFeatures:
    """One store: ``z (T, p)`` on its ``time`` axis, and its provenance.

    ``tiles`` says how spatially tiled embeddings ``(time, tile_y, tile_x, d)`` became rows:
    ``none`` (one tile), ``concat`` (tiles side by side, p = tiles x d) or ``mean``.
    """

    path: str
    cell: str
    embedding_dim: int
    time: np.ndarray
    z: np.ndarray
    tiles: str
    window: int
    checkpoint: str
    perturb: str | None
    channels: tuple[str, ...]
    queries: dict[str, list[float]] = field(default_factory=dict)
    # first and last time the encoder trained on (None: not recorded)
    train_range: tuple[str, str] | None = None
    # z's first components that are the input's EOF principal components: model.eof_components
    # at t, then model.eof_lag_components steps back (fixed; the rest are learned)
    eof_components: int = 0
    dataset: xr.Dataset | None = field(default=None, repr=False)


def _train_range(attrs: dict) -> tuple[str, str] | None:
    value = json.loads(attrs.get("faextract_train_range") or "null")
    return (str(value[0]), str(value[1])) if value else None


def _fixed_components(attrs: dict) -> int:
    """How many leading components of a store's embedding are EOF principal components (at t
    and lagged): the part fixed before training."""
    return int(attrs.get("eof_components", 0)) + int(attrs.get("eof_lag_components", 0))


def _channels(attrs: dict) -> tuple[str, ...]:
    if "faextract_channels" in attrs:
        return tuple(json.loads(attrs["faextract_channels"]))
    # Stores from before the attribute name their channels in the comment.
    m = re.search(r"channels ([^;]+)", str(attrs.get("comment", "")))
    if not m:
        return ()
    return tuple(c.strip() for c in m.group(1).split(","))


def load_store(path: str | os.PathLike, tiles: str = "concat") -> StoreFeatures:
    """Open a complete embeddings store and read its embeddings into memory."""
    from faextract.store import open_embeddings

    if tiles not in TILE_MODES:
        raise FaextractError(f"--tiles must be one of {', '.join(TILE_MODES)}, got {tiles!r}")
    path = os.fspath(path)
    ds = open_embeddings(path)
    if "embedding" not in ds:
        raise DataError(f"{path}: the store holds no embeddings")
    emb = ds["embedding"].values.astype(np.float64)
    mode = "none"
    if emb.ndim == 4:  # (time, tile_y, tile_x, component)
        if emb.shape[1] * emb.shape[2] == 1:
            emb = emb[:, 0, 0]
        elif tiles == "mean":
            emb, mode = np.nanmean(emb, axis=(1, 2)), "mean"
        else:
            emb, mode = emb.reshape(emb.shape[0], -1), "concat"
    layout = json.loads(ds.attrs.get("faextract_layout", "{}"))
    window = int(layout.get("warmup", 0)) + int(layout.get("keep", 1))
    return StoreFeatures(
        path=path,
        cell=str(ds.attrs.get("faextract_cell", "unknown")),
        embedding_dim=int(ds.sizes["component"]),
        time=ds["time"].values,
        z=emb,
        tiles=mode,
        window=max(window, 1),
        checkpoint=str(ds.attrs.get("faextract_checkpoint_sha256", "")),
        perturb=ds.attrs.get("faextract_perturb") or None,
        channels=_channels(ds.attrs),
        queries=dict(layout.get("queries") or {}),
        train_range=_train_range(ds.attrs),
        eof_components=_fixed_components(ds["embedding"].attrs) if mode == "none" else 0,
        dataset=ds,
    )
