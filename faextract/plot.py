"""Quicklook PNGs of an embeddings store, for a human to look at.

- ``embedding_pcs.png``: the leading principal components of the embeddings over time
  (with their explained variance), the quickest view of what the encoder tracks;
- ``<map>_head<N>.png``: each attention map (received, distance, queries) averaged over the
  attention steps, one figure per head, on a lat/lon grid.

Needs matplotlib (``pip install "faextract[plot]"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from faextract.errors import FaextractError
from faextract.outputs import PLOT_MANIFEST, existing_output, is_plot_dir
from faextract.store import open_embeddings


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FaextractError("faextract plot needs matplotlib: pip install matplotlib") from None
    return plt


def principal_components(emb: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``emb (T, d)`` -> (scores ``(T, k)``, explained variance ratios ``(k,)``)."""
    x = emb - np.nanmean(emb, axis=0, keepdims=True)
    x = np.nan_to_num(x)
    u, s, _vt = np.linalg.svd(x, full_matrices=False)
    k = min(k, s.size)
    var = s**2 / max((s**2).sum(), 1e-30)
    return u[:, :k] * s[:k], var[:k]


def _claim_folder(out: Path, store, overwrite: bool) -> None:
    """A new or empty folder, or one of our earlier quicklooks (its figures removed first,
    with ``overwrite``): figures from another store are never left beside the new ones."""
    present = existing_output(out, inputs=[store], ours=is_plot_dir, what="quicklook folder")
    if present and is_plot_dir(out):
        if not overwrite:
            raise FaextractError(
                f"{out}: already holds quicklook figures (use --overwrite to replace them)"
            )
        for name in json.loads((out / PLOT_MANIFEST).read_text()).get("figures", []):
            (out / Path(name).name).unlink(missing_ok=True)
        (out / PLOT_MANIFEST).unlink()


def calendar_ticks(times: np.ndarray, most: int = 10) -> tuple[list[int], list[str]]:
    """Tick positions on the first step of a month, every 1, 2, 3, 6 or 12*n months so that
    at most ``most`` show, labelled ``YYYY-MM`` (or ``YYYY`` for yearly ticks); any calendar."""
    from faextract.data.time import to_cftime

    if len(times) == 0:
        return [], []
    dates = to_cftime(np.asarray(times), "standard")
    starts = [0] + [i for i in range(1, len(dates)) if dates[i].month != dates[i - 1].month]
    months = [dates[i].year * 12 + dates[i].month - 1 for i in starts]
    span = months[-1] - months[0] + 1
    every = next((k for k in (1, 2, 3, 6, 12, 24, 60, 120, 600) if span / k <= most), 1200)
    chosen = [(i, m) for i, m in zip(starts, months, strict=True) if m % every == 0]
    if not chosen:  # shorter than a month: the first step
        return [0], [str(dates[0])[:10]]
    fmt = (lambda d: f"{d.year:04d}") if every % 12 == 0 else (lambda d: f"{d.year:04d}-{d.month:02d}")
    return [i for i, _m in chosen], [fmt(dates[i]) for i, _m in chosen]


def plot_store(
    path: str | os.PathLike, out_dir: str | os.PathLike, max_heads: int = 4, overwrite: bool = False
) -> list[str]:
    """Write quicklook PNGs of the store at ``path`` into ``out_dir``; returns their paths.

    ``out_dir`` must be new, empty, or an earlier quicklook folder (replaced with ``overwrite``).
    """
    plt = _pyplot()
    ds = open_embeddings(path)
    out = Path(out_dir)
    _claim_folder(out, path, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    emb = ds["embedding"].values
    if emb.ndim == 4:  # (time, tile_y, tile_x, d): average the tiles
        emb = np.nanmean(emb, axis=(1, 2))
    scores, var = principal_components(emb)
    times = np.arange(emb.shape[0])
    fig, ax = plt.subplots(figsize=(10, 4))
    for i in range(scores.shape[1]):
        ax.plot(times, scores[:, i], label=f"PC{i + 1} ({100 * var[i]:.0f}%)")
    ticks, labels = calendar_ticks(ds["time"].values)
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_title("Embeddings: leading principal components")
    ax.set_ylabel("score")
    ax.legend()
    fig.tight_layout()
    p = out / "embedding_pcs.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(str(p))

    lat, lon = ds["lat"].values, ds["lon"].values
    for name in [v for v in ds.data_vars if v.startswith("attention_")]:
        da = ds[name]
        mean = da.mean("attention_time").values  # (head, lat, lon)
        units = da.attrs.get("units", "")
        for h in range(min(mean.shape[0], max_heads)):
            fig, ax = plt.subplots(figsize=(8, 4))
            order = np.argsort(lat)
            im = ax.pcolormesh(lon, lat[order], mean[h][order], shading="nearest", cmap="viridis")
            fig.colorbar(im, ax=ax, label=units)
            ax.set_title(
                f"{da.attrs.get('long_name', name)}\nhead {h}, mean over {da.sizes['attention_time']} steps",
                fontsize=9,
            )
            ax.set_xlabel("longitude (deg E)")
            ax.set_ylabel("latitude (deg N)")
            fig.tight_layout()
            p = out / f"{name}_head{h}.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(str(p))
    (out / PLOT_MANIFEST).write_text(
        json.dumps({"store": os.fspath(path), "figures": [Path(w).name for w in written]})
    )
    return written
