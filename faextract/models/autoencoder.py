"""The trainable network around a recurrent cell: encoder, embedding head, decoders.

Data flow, per window ``x (B, T, C, H, W)`` (normalized, 0 where invalid) and
``mask (B, T, C, H, W)``::

    [x, mask] -> stem 3x3 conv -> `downsample` stride-2 convs          (per frame)
              -> `layers` residual recurrent cells, u + cell(u) (the last one gives z_t)
              -> latent (B, T, F, h, w), z (B, T, d)
    latent, FiLM(z) -> upsampling decoder -> reconstruction of x_t   (objective reconstruct)
                                          -> prediction of x_{t+1}   (objective forecast)
    z alone -> linear -> pooled x_t, x_{t+1}, ..., x_{t+K}           (the embedding decoder)
    x_t pooled on eof_grid -> k frozen EOFs -> the first k of z_t   (``eof_components``)
    the first m of those k at t - lag      -> the next m of z_t     (``eof_lag_components``)
    z -> Student's t soft assignment q (B, T, K)                     (optional DEC head)

The embedding decoder is what gives z its meaning: the spatial decoder can reconstruct from
the latent maps alone, so without it z rides along unused. A *linear* map from z_t to the
fields, pooled on ``embedding_grid``, at the current step and ``embedding_horizon`` steps ahead,
makes z a linearly decodable summary of the large-scale state and of where it is heading
(with 0 horizons it is a nonlinear cousin of the leading EOFs; the horizons make it keep
what the recurrent memory knows of the future, which a snapshot's EOFs cannot).

FAConvLSTM produces z itself (subspace head + seasonal temporal attention, causal with
``causal_embedding``: z_t then depends on steps <= t only, never on later steps of its window,
which would leak the future into a per-step feature); the other cells get a plain
:class:`~faextract.models.subspace.SubspaceHead` on their (causal) hidden state. Spatial convolutions wrap around
in longitude for periodic global grids and pad with zeros in latitude. The cells are
residual (as in the minimal conv RNNs' official layout): the recurrent state only has to carry
what the current frame does not show, which trains several times faster than a plain stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.attention import AxialWeights
from faextract.models.eof import EOFProjection
from faextract.models.layers import pad_spatial
from faextract.models.registry import cell_class, create_cell
from faextract.models.subspace import SubspaceHead

#: Grid of the pooled fields decoded from the embedding alone (lat x lon cells) in models
#: that do not say (checkpoints from before ``embedding_grid``).
COARSE_SHAPE = (4, 8)


class GridConv(nn.Module):
    """``(N, C, H, W)`` conv with 'same'-style padding: circular in lon when periodic."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, periodic: bool = False
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride)
        self.pad = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
        self.periodic = periodic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pad
        return self.conv(pad_spatial(x, (a, b, a, b), self.periodic))


class ClusterHead(nn.Module):
    """DEC soft assignment (Xie et al. 2016): Student's t kernel between z and K centres."""

    def __init__(self, clusters: int, dim: int, alpha: float = 1.0):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(clusters, dim) * 0.1)
        self.alpha = alpha
        self.initialized = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(z.reshape(-1, z.shape[-1]), self.centers).pow(2)
        q = (1.0 + d2 / self.alpha).pow(-(self.alpha + 1) / 2)
        q = q / q.sum(dim=-1, keepdim=True)
        return q.reshape(*z.shape[:-1], -1)

    @staticmethod
    def target(q: torch.Tensor) -> torch.Tensor:
        """The sharpened target p_ik = (q_ik^2 / f_k) / sum_j (q_ij^2 / f_j), f_k = sum_i q_ik."""
        flat = q.reshape(-1, q.shape[-1])
        w = flat.pow(2) / flat.sum(dim=0, keepdim=True)
        return (w / w.sum(dim=-1, keepdim=True)).reshape(q.shape).detach()

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, iters: int = 25, seed: int = 0) -> None:
        """Initialize the centres by k-means (k-means++ seeding) on embeddings ``(N, d)``."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = z.detach().float().cpu()
        K = self.centers.shape[0]
        centers = [z[torch.randint(len(z), (1,), generator=g)].squeeze(0)]
        for _ in range(1, K):
            d2 = torch.cdist(z, torch.stack(centers)).pow(2).min(dim=1).values
            centers.append(z[torch.multinomial(d2 / d2.sum() + 1e-12, 1, generator=g)].squeeze(0))
        c = torch.stack(centers)
        for _ in range(iters):
            assign = torch.cdist(z, c).argmin(dim=1)
            for k in range(K):
                members = z[assign == k]
                if len(members):
                    c[k] = members.mean(dim=0)
        self.centers.copy_(c.to(self.centers.device))
        self.initialized = True


@dataclass
class NetworkOutput:
    """Shapes: recon/forecast ``(B, T, C, H, W)``; coarse ``(B, T, K + 1 + P, C, gh, gw)`` (the
    embedding decoder's fields at steps t .. t + K, then at t - L for each of the P lags of
    ``embedding_past``, on ``embedding_grid``);
    embeddings ``(B, T, d)``; latent ``(B, T, F, h, w)``; q ``(B, T, K)`` or None."""

    recon: torch.Tensor | None
    forecast: torch.Tensor | None
    coarse: torch.Tensor
    embeddings: torch.Tensor
    latent: torch.Tensor
    attention: list[tuple[int, AxialWeights]] = field(default_factory=list)
    q: torch.Tensor | None = None


class ClimateAutoencoder(nn.Module):
    """Encoder (stem, downsampling, recurrent cells, embedding head) and decoders."""

    # Long by its argument list (every model hyperparameter a checkpoint records).
    def __init__(
        self,
        in_channels: int,
        *,
        cell: str = "faconvlstm",
        filters: int = 32,
        layers: int = 2,
        kernel_size: int = 3,
        stem_channels: int = 16,
        downsample: int = 2,
        embedding_dim: int = 32,
        cell_options: dict | None = None,
        objective: str = "both",
        clusters: int = 0,
        periodic: bool = False,
        seasonal_period: float = 365.0,
        embedding_grid: tuple[int, int] = COARSE_SHAPE,
        embedding_horizon: int = 0,
        embedding_past: tuple[int, ...] = (),
        embedding_norm: bool = True,
        head_grid: tuple[int, int] | None = None,
        causal_embedding: bool = False,
        head_dropout: float = 0.0,
        embedding_noise: float = 0.0,
        head_rank: int = 0,
        input_skip: str = "none",
        eof_components: int = 0,
        eof_grid: tuple[int, int] = (36, 72),
        eof_lag: int = 0,
        eof_lag_components: int = 0,
    ):
        super().__init__()
        if not 0 <= eof_components < embedding_dim:
            raise ValueError(
                f"model.eof_components must be in [0, {embedding_dim - 1}] (embedding_dim "
                f"{embedding_dim}), got {eof_components}"
            )
        if eof_components and skip_mode(input_skip) != "none":
            raise ValueError("model.eof_components and model.input_skip cannot be combined")
        if eof_lag_components and not (
            1 <= eof_lag_components <= eof_components
            and eof_lag >= 1
            and eof_components + eof_lag_components < embedding_dim
        ):
            raise ValueError(
                f"model.eof_lag_components must be in [0, eof_components = {eof_components}] "
                f"with eof_lag >= 1 and fewer than embedding_dim {embedding_dim} fixed "
                f"components in all; got {eof_lag_components} at lag {eof_lag}"
            )
        self.eof_lag = int(eof_lag) if eof_lag_components else 0
        self.eof_lag_components = int(eof_lag_components)
        # z: k EOF components at t, m at t - lag, then what the recurrent head makes
        learned = embedding_dim - eof_components - self.eof_lag_components
        if not embedding_noise >= 0:
            raise ValueError(f"model.embedding_noise must be >= 0, got {embedding_noise}")
        self.embedding_noise = float(embedding_noise)
        if embedding_horizon < 0:
            raise ValueError(f"model.embedding_horizon must be >= 0, got {embedding_horizon}")
        self.embedding_grid = tuple(int(v) for v in embedding_grid)
        self.embedding_horizon = int(embedding_horizon)
        self.embedding_past = tuple(int(v) for v in embedding_past)
        if any(v < 1 for v in self.embedding_past):
            raise ValueError(f"model.embedding_past must hold lags >= 1, got {embedding_past}")
        if objective not in ("reconstruct", "forecast", "both"):
            raise ValueError(f"objective must be reconstruct, forecast or both, got {objective!r}")
        if layers < 1:
            raise ValueError(f"model.layers must be >= 1, got {layers}")
        self.in_channels, self.objective, self.downsample = in_channels, objective, downsample
        self.cell_name = cell
        self.periodic = periodic
        self.stem = GridConv(2 * in_channels, stem_channels, 3, 1, periodic)
        self.down = nn.ModuleList(
            GridConv(stem_channels if i == 0 else filters, filters, 3, 2, periodic)
            for i in range(downsample)
        )
        # The residual stack needs the cells' width at its input.
        self.proj = nn.Identity() if downsample else nn.Conv2d(stem_channels, filters, 1)
        width = filters
        options = dict(cell_options or {})
        self.cells = nn.ModuleList()
        for i in range(layers):
            kw = dict(
                filters=filters,
                kernel_size=kernel_size,
                padding="same",
                data_format="channels_first",
                return_sequences=True,
                in_channels=width if i == 0 else filters,
            )
            if cell_class(cell).makes_embeddings:
                kw.update(
                    periodic=periodic,
                    seasonal_period=seasonal_period,
                    embedding_norm=embedding_norm,
                    head_grid=head_grid,
                    head_dropout=head_dropout,
                    head_rank=head_rank,
                    temporal_causal=causal_embedding,
                )
                kw.update(options)
                kw["embedding_dim"] = learned if i == layers - 1 else 0
            else:
                kw.update(options)
            self.cells.append(create_cell(cell, **kw))
        # Cells that make no embedding get the same head outside them.
        self.head = (
            None
            if self.cells[-1].makes_embeddings
            else SubspaceHead(filters, learned, embedding_norm, head_grid, head_dropout,
                              head_rank)  # fmt: skip
        )
        self.film = nn.Linear(embedding_dim, 2 * filters)
        self.up = nn.ModuleList(
            GridConv(filters, filters, 3, 1, periodic) for _ in range(downsample)
        )
        self.recon_out = (
            GridConv(filters, in_channels, 3, 1, periodic) if objective != "forecast" else None
        )
        self.forecast_out = (
            GridConv(filters, in_channels, 3, 1, periodic) if objective != "reconstruct" else None
        )
        gh, gw = self.embedding_grid
        slots = embedding_horizon + 1 + len(self.embedding_past)  # t, t+1..t+K, then t-L
        self.coarse = nn.Linear(embedding_dim, slots * in_channels * gh * gw)
        # z_t += a linear map of x_t pooled on the embedding grid: the EOF-like path (see encode)
        self.input_skip = skip_mode(input_skip)
        self.input_map = (
            nn.Linear(in_channels * gh * gw, embedding_dim) if self.input_skip == "linear" else None
        )
        if self.input_skip == "tied":
            # a tied autoencoder starts as a projection: orthonormal columns, D^T D = I (the
            # default init's D D^T amplifies the field ~10x and training spends epochs undoing it)
            with torch.no_grad():
                nn.init.orthogonal_(self.coarse.weight[: in_channels * gh * gw])
        self.eof_grid = tuple(int(v) for v in eof_grid)
        self.eof = (
            EOFProjection(eof_components, in_channels * self.eof_grid[0] * self.eof_grid[1])
            if eof_components
            else None
        )
        self.cluster = ClusterHead(clusters, embedding_dim) if clusters else None

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (the downsampling factor)."""
        return 2**self.downsample

    def compile_cells(self, mode: str = "default") -> None:
        """``torch.compile`` what the encoder calls in each cell (its ``forward_features``);
        each cell traces as one graph (tests/test_compile.py)."""
        for cell in self.cells:
            cell.forward_features = torch.compile(cell.forward_features, mode=mode)

    @property
    def attention_layout(self) -> tuple[int, int] | None:
        """``(k, heads)``: :meth:`encode` with ``need_weights`` returns spatial attention on
        every k-th step (t % k == 0) with ``heads`` heads; None when the model has none."""
        return self.cells[-1].attention_layout

    def encode(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        phase: torch.Tensor | None = None,
        step_valid: torch.Tensor | None = None,
        need_weights: bool = False,
    ):
        """``(B, T, C, H, W)`` -> latent ``(B, T, F, h, w)``, embeddings ``(B, T, d)``, attention."""
        B, T, C, H, W = x.shape
        if H % self.multiple or W % self.multiple:
            raise ValueError(
                f"grid {H}x{W} must be a multiple of {self.multiple} (tile with multiple={self.multiple})"
            )
        u = torch.cat([x, mask.to(x.dtype)], dim=2).reshape(B * T, 2 * C, H, W)
        u = F.gelu(self.stem(u))
        for conv in self.down:
            u = F.gelu(conv(u))
        u = self.proj(u)
        u = u.reshape(B, T, *u.shape[1:])
        # Validity on the latent grid: a latent cell is valid if any input cell under it is.
        valid = mask.any(dim=2).to(x.dtype).reshape(B * T, 1, H, W)
        if self.downsample:
            valid = F.max_pool2d(valid, self.multiple)
        valid = valid.reshape(B, T, *valid.shape[2:]) > 0
        attention: list = []
        z = None
        for i, cell in enumerate(self.cells):
            last = i == len(self.cells) - 1
            feats = cell.forward_features(
                u, phase, valid=valid, step_valid=step_valid, need_weights=need_weights and last
            )
            u = u + feats.hidden
            if last:
                z, attention = feats.embeddings, feats.attention
        if z is None:
            z = self.head(u, valid)
        if self.input_skip != "none":
            z = z + self.skip(x, mask).to(z.dtype)
        if self.eof is not None:
            pcs = self.principal_components(x, mask)
            fixed = [pcs, self.lagged_components(pcs, step_valid)] if self.eof_lag else [pcs]
            z = torch.cat([*(f.to(z.dtype) for f in fixed), z], dim=-1)
        return u, z, attention

    def pooled_input(
        self, x: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``(B, T, C, H, W) -> (B, T, C * gh * gw)``: the input averaged onto ``grid`` (default
        the embedding decoder's; valid cells only, 0 where a coarse cell has none)."""
        pooled, ok = coarse_target(x, mask, grid or self.embedding_grid)
        return (pooled * ok).flatten(2)

    def principal_components(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``eof_components``' part of z: ``(B, T, C, H, W) -> (B, T, k)``, the leading
        principal components of the input pooled on ``eof_grid`` (see
        :mod:`faextract.models.eof`)."""
        eof = self.eof
        if not eof.is_fitted:
            raise RuntimeError("the model's EOF components are not fitted (EncoderJob fits them)")
        grid = eof.input_grid
        if tuple(x.shape[-2:]) != grid:
            raise ValueError(
                f"the model's EOF components were fitted on the whole {grid[0]}x{grid[1]} grid; "
                f"got {x.shape[-2]}x{x.shape[-1]} (spatial tiles cannot use them)"
            )
        return eof(self.pooled_input(x, mask, self.eof_grid))

    def lagged_components(
        self, pcs: torch.Tensor, step_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eof_lag_components``' part of z: ``pcs (B, T, k) -> (B, T, m)``, the first m
        principal components ``eof_lag`` steps back, where the window holds that step; before
        it, those of the window's first valid step (``step_valid (B, T)``; the record's first
        step when embedding, whose windows start with ``eof_lag`` steps of warm-up). A
        snapshot's EOFs cannot tell an oscillation's rise from its fall; the same pattern a
        quarter period earlier can."""
        B, T, _ = pcs.shape
        first = (
            step_valid.float().argmax(dim=1)
            if step_valid is not None
            else torch.zeros(B, dtype=torch.long, device=pcs.device)
        )
        back = torch.arange(T, device=pcs.device) - self.eof_lag
        idx = torch.maximum(back[None, :], first[:, None])  # (B, T)
        idx = idx[..., None].expand(B, T, self.eof_lag_components)
        return pcs[..., : self.eof_lag_components].gather(1, idx)

    @property
    def fixed_components(self) -> int:
        """How many leading components of z are EOF principal components (at t and lagged),
        fixed at fitting time; the rest are learned."""
        return (self.eof.k if self.eof is not None else 0) + self.eof_lag_components

    def skip(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``input_skip``'s part of z: ``(B, T, C, H, W) -> (B, T, d)``, a linear function of
        the present input averaged onto the grid the embedding decoder reconstructs, added to
        what the recurrent state carries. ``linear``: its own map (``C * gh * gw x d``
        weights). ``tied``: the transpose of the embedding decoder's map for the present step,
        no weights of its own: with z = D^T x and the decoder x^ = D z, reconstructing the
        present is a tied linear autoencoder, whose optimum is the span of the field's leading
        EOFs; the map cannot fit arbitrary codes to the training months."""
        flat = self.pooled_input(x, mask)
        if self.input_map is not None:
            return self.input_map(flat)
        present = self.coarse.weight[: flat.shape[-1]]  # (C * gh * gw, d): horizon 0 comes first
        return flat @ present.to(flat.dtype)

    def decode(self, latent: torch.Tensor, z: torch.Tensor):
        B, T, Fc, h, w = latent.shape
        g, b = self.film(z).reshape(B * T, 2 * Fc, 1, 1).chunk(2, dim=1)
        u = latent.reshape(B * T, Fc, h, w) * (1 + g) + b
        for conv in self.up:
            u = F.gelu(conv(F.interpolate(u, scale_factor=2, mode="nearest")))

        def unflat(t):
            return None if t is None else t.reshape(B, T, *t.shape[1:])

        recon = unflat(self.recon_out(u)) if self.recon_out is not None else None
        forecast = unflat(self.forecast_out(u)) if self.forecast_out is not None else None
        return recon, forecast

    def noisy(self, z: torch.Tensor, step_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, T, d)`` as the decoders hear it while training: plus Gaussian noise of
        ``embedding_noise`` times each component's standard deviation over the batch (the
        valid steps), so every component passes at most a fixed signal-to-noise ratio
        (``1 / embedding_noise**2``) whatever its scale, and z cannot spend its capacity on
        month-by-month detail (memorizing). The EOF components (``eof_components``) are heard
        clean: they are fixed, and noise on them would only move the decoders' trust to the
        learned components. ``z`` itself in eval mode or with 0."""
        if not self.training or self.embedding_noise == 0:
            return z
        x = z[step_valid] if step_valid is not None else z.reshape(-1, z.shape[-1])
        std = x.detach().float().std(dim=0) if x.shape[0] > 1 else torch.ones_like(z[0, 0])
        std[: self.fixed_components] = 0.0
        return z + self.embedding_noise * std.to(z.dtype) * torch.randn_like(z)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        phase: torch.Tensor | None = None,
        step_valid: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> NetworkOutput:
        latent, z, attention = self.encode(x, mask, phase, step_valid, need_weights)
        heard = self.noisy(z, step_valid)
        recon, forecast = self.decode(latent, heard)
        B, T = z.shape[:2]
        coarse = self.coarse(heard).reshape(
            B, T, -1, self.in_channels, *self.embedding_grid
        )
        q = self.cluster(z) if self.cluster is not None else None
        return NetworkOutput(recon, forecast, coarse, z, latent, attention, q)


SKIP_MODES = ("none", "linear", "tied")


def skip_mode(value) -> str:
    """``model.input_skip`` as one of :data:`SKIP_MODES` (true/false read as linear/none)."""
    if isinstance(value, bool):
        return "linear" if value else "none"
    if value not in SKIP_MODES:
        raise ValueError(f"model.input_skip must be one of {', '.join(SKIP_MODES)}, got {value!r}")
    return value


def coarse_target(x: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int] = COARSE_SHAPE):
    """Masked average-pool of ``x (B, T, C, H, W)`` to ``grid``: (target, valid), each
    ``(B, T, C, *grid)``."""
    B, T, C, H, W = x.shape
    m = mask.to(x.dtype).reshape(B * T, C, H, W)
    s = F.adaptive_avg_pool2d(x.reshape(B * T, C, H, W) * m, grid)
    n = F.adaptive_avg_pool2d(m, grid)
    target = s / n.clamp(min=1e-6)
    return target.reshape(B, T, C, *grid), (n > 0).reshape(B, T, C, *grid)
