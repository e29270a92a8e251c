"""Attention maps of a batch, accumulated onto the embedding store's grid.

:class:`AttentionMaps` turns one tile's axial attention weights into maps on its latent grid;
:class:`AttentionAccumulator` adds a batch's maps (all their attention steps) to a block's
untilers, upsampled to the input grid.
"""

from __future__ import annotations

import numpy as np
import torch

from faextract.data.boxes import lon_in_box
from faextract.data.cube import Cube
from faextract.data.tiling import Window

EARTH_RADIUS_KM = 6371.0


def _cell_means(idx: np.ndarray, coord: np.ndarray, m: int, circular: bool = False) -> np.ndarray:
    """Mean coordinate of each run of ``m`` input cells (a latent cell); NaN for padding only.

    ``circular`` unwraps longitudes first (over the valid cells only: a NaN inside
    ``np.unwrap`` would turn every later value into NaN) so a cell across the dateline
    averages to the right place.
    """
    vals = np.where(idx >= 0, coord[np.maximum(idx, 0)], np.nan).astype(np.float64)
    ok = np.isfinite(vals)
    if circular and ok.any():
        vals[ok] = np.rad2deg(np.unwrap(np.deg2rad(vals[ok])))
    vals = vals.reshape(-1, m)
    n = np.isfinite(vals).sum(axis=1)
    return np.where(n > 0, np.nansum(vals, axis=1) / np.maximum(n, 1), np.nan)


def _latent_geo(
    tiler_lat: np.ndarray, tiler_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray, m: int
):
    """Centres (deg) of the latent cells of one tile; NaN where a cell covers only padding."""
    return _cell_means(tiler_lat, lat, m), _cell_means(tiler_lon, lon, m, circular=True)


class AttentionMaps:
    """Turns axial attention weights into maps on one tile's latent grid.

    The effective 2-D attention from query ``(y, x)`` to key ``(y', x')`` is
    ``E = col[x](y, y') * row[y'](x, x')`` (see :mod:`faextract.models.attention`). The maps are
    contractions of ``E`` computed without forming it (or any ``(h*w)^2`` array: a 1-degree
    global latent grid would need gigabytes):

    - attention received by key k: ``sum_q E[q, k]`` = ``sum_x (sum_y col[x](y, y')) row[y'](x, x')``;
    - mean attention distance of query q: ``sum_k E[q, k] d(q, k)``, with the great-circle
      distance ``d`` rebuilt for a few query rows at a time from per-row and per-column
      factors (haversine: ``a = A[y, y'] + B[y, y'] * S[x, x']``);
    - a query region's map: the mean over its cells q of ``E[q, :]``, times ``h*w`` (1 = uniform);
    - the reverse, how much each query q attends to the region: ``sum_{k in R} E[q, k]`` over
      the region's share of the grid (1 = uniform). Influence runs both ways: a region that
      drives another is attended *by* it (the driven region's future depends on it).

    Tensors live on the model's device, so on a GPU the maps are computed there and only the
    small ``(n, h, w)`` results travel to the host.
    """

    #: Entries of the distance block ``(rows, h, w, w)`` built at a time.
    BLOCK = 1 << 22
    #: Distance tables up to this many entries (64 MB) are built once and kept: the grid
    #: (e.g. 24 x 48 latent cells: 1.3 M) is the same for every batch.
    KEEP = 1 << 24

    def __init__(
        self,
        lat_c: np.ndarray,
        lon_c: np.ndarray,
        queries: dict,
        in_lat: np.ndarray,
        in_lon: np.ndarray,
        device: torch.device | str = "cpu",
    ):
        """``lat_c``/``lon_c``: latent cell centres (NaN for padding); ``in_lat``/``in_lon``:
        the tile's input-grid coordinates (NaN where padded), used to find the latent cells a
        query region overlaps."""
        h, w = lat_c.size, lon_c.size
        self.h, self.w = h, w
        self._kept: torch.Tensor | None = None
        phi = np.deg2rad(lat_c.astype(np.float64))
        lam = np.deg2rad(lon_c.astype(np.float64))
        A = np.sin((phi[None, :] - phi[:, None]) / 2) ** 2  # (y, y')
        B = np.cos(phi[:, None]) * np.cos(phi[None, :])
        S = np.sin((lam[None, :] - lam[:, None]) / 2) ** 2  # (x, x')
        # Pairs with a padded cell get a == NaN -> distance 0 (they carry no weight anyway).
        to = dict(device=device, dtype=torch.float32)
        self.A, self.B, self.S = (torch.as_tensor(v, **to) for v in (A, B, S))
        my, mx = in_lat.size // h, in_lon.size // w
        valid = (np.isfinite(lat_c)[:, None] & np.isfinite(lon_c)[None, :]).ravel()
        self.query_cells, self.query_regions = {}, {}
        for name, (lat0, lat1, lon0, lon1) in queries.items():
            in_lon_box = lon_in_box(in_lon, lon0, lon1)
            in_lat_box = (in_lat >= lat0) & (in_lat <= lat1)
            # A latent cell belongs to the query if any input cell under it lies in the box:
            # a region smaller than one latent cell still has a query.
            rows = in_lat_box.reshape(h, my).any(axis=1)
            cols = in_lon_box.reshape(w, mx).any(axis=1)
            cells = np.nonzero((rows[:, None] & cols[None, :]).ravel() & valid)[0]
            self.query_cells[name] = (
                torch.as_tensor(cells // w, device=device),
                torch.as_tensor(cells % w, device=device),
            )
            region = np.zeros(h * w, dtype=np.float32)
            region[cells] = 1.0
            self.query_regions[name] = torch.as_tensor(region.reshape(h, w), device=device)

    def _distance_rows(self, y0: int, y1: int) -> torch.Tensor:
        """Great-circle distance (km) from query rows ``y0:y1`` as ``(rows, y', x, x')``."""
        if self.h * self.h * self.w * self.w <= self.KEEP:
            if self._kept is None:
                self._kept = self._distances(0, self.h)
            return self._kept[y0:y1]
        return self._distances(y0, y1)

    def _distances(self, y0: int, y1: int) -> torch.Tensor:
        a = self.A[y0:y1, :, None, None] + self.B[y0:y1, :, None, None] * self.S[None, None]
        d = 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0, 1)))
        return torch.nan_to_num(d, nan=0.0)

    def __call__(self, row: torch.Tensor, col: torch.Tensor) -> dict[str, torch.Tensor]:
        """``row (n, h, w, w)``, ``col (n, w, h, h)`` (n = windows x steps x heads) -> maps
        ``(n, h, w)`` on the host, float32."""
        row, col = row.float(), col.float()
        n, h, w = row.shape[0], self.h, self.w
        out = {"attention_received": torch.einsum("nxk,nkxl->nkl", col.sum(dim=2), row)}
        distance = torch.empty(n, h, w, device=row.device)
        step = max(1, self.BLOCK // (h * w * w))
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            # R[n, y, x, y'] = sum_x' row[y'](x, x') d((y, x), (y', x'))
            r = torch.einsum("nkxl,ykxl->nyxk", row, self._distance_rows(y0, y1))
            distance[:, y0:y1] = torch.einsum("nxyk,nyxk->nyx", col[:, :, y0:y1], r)
        out["attention_distance"] = distance
        for name, (qy, qx) in self.query_cells.items():
            if qy.numel():
                # E[q, (y', x')] for each query cell q = (qy, qx): col[qx](qy, y') row[y'](qx, x')
                cq = col[:, qx, qy, :]  # (n, Q, h)
                rq = row[:, :, qx, :]  # (n, h, Q, w)
                m = torch.einsum("nqk,nkql->nkl", cq, rq) / qy.numel()
                out[f"attention_query_{name}"] = m * (h * w)
                # The other direction: the mass every query (y, x) puts on the region,
                # sum_{k in R} col[x](y, y') row[y'](x, x'), over the region's share (1 = uniform).
                region = self.query_regions[name]
                row_r = torch.einsum("nkxl,kl->nkx", row, region)  # (n, y', x)
                m_from = torch.einsum("nxyk,nkx->nyx", col, row_r)
                out[f"attention_from_{name}"] = m_from * (h * w / qy.numel())
        return {key: v.cpu() for key, v in out.items()}


def upsample(t: torch.Tensor, m: int) -> np.ndarray:
    """``(..., h, w)`` -> ``(..., h*m, w*m)`` nearest (latent cells back onto the input grid)."""
    if m > 1:
        t = t.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)
    return t.float().numpy()


class AttentionAccumulator:
    """Adds the attention maps of a batch's windows (all their attention steps) to the block's
    untilers; one :class:`AttentionMaps` per spatial tile, built on first use."""

    def __init__(self, cube: Cube, multiple: int, queries: dict, k: int, device):
        self.builders: dict[tuple[int, int], AttentionMaps] = {}
        self.cube, self.device = cube, device
        self.m, self.queries, self.k = multiple, queries, k

    def _builder(self, w: Window) -> AttentionMaps:
        if w.tile not in self.builders:
            cube, m = self.cube, self.m
            lat_c, lon_c = _latent_geo(w.lat, w.lon, cube.lat, cube.lon, m)
            in_lat = np.where(w.lat >= 0, cube.lat[np.maximum(w.lat, 0)], np.nan)
            in_lon = np.where(w.lon >= 0, cube.lon[np.maximum(w.lon, 0)], np.nan)
            self.builders[w.tile] = AttentionMaps(
                lat_c, lon_c, self.queries, in_lat, in_lon, self.device
            )
        return self.builders[w.tile]

    def add(self, untilers: dict, attn, group: list[Window]) -> None:
        if not attn:
            return
        m, k = self.m, self.k
        steps = np.array([step for step, _ in attn])
        rows = torch.stack([wt.row for _, wt in attn], dim=1)  # (B, S, heads, h, w, w)
        cols = torch.stack([wt.col for _, wt in attn], dim=1)  # (B, S, heads, w, h, h)
        by_tile: dict[tuple[int, int], list[int]] = {}
        for j, w in enumerate(group):
            by_tile.setdefault(w.tile, []).append(j)
        for js in by_tile.values():
            sel = js if len(js) < len(group) else slice(None)
            maps = self._builder(group[js[0]])(rows[sel].flatten(0, 2), cols[sel].flatten(0, 2))
            for name, value in maps.items():
                up = upsample(value.view(len(js), len(steps), -1, *value.shape[-2:]), m)
                for i, j in enumerate(js):
                    t = group[j].time[steps]
                    times = np.where((t >= 0) & (t % k == 0), t // k, -1)
                    untilers[name].add_steps(group[j], steps, up[i], times)
