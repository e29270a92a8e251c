"""The output side of ``faextract embed``: the store made or reopened, each block's arrays
assembled from its windows, and a thread that writes finished blocks while the next computes."""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from faextract import __version__
from faextract.data.cube import Cube
from faextract.data.prefetch import offer
from faextract.data.tiling import Untiler, Window
from faextract.embed.attention_maps import upsample
from faextract.embed.plan import EmbedOptions, EmbedPlan, check_fingerprint, check_layout
from faextract.errors import FaextractError
from faextract.outputs import existing_output, is_embedding_store, remove_output
from faextract.store import (
    FORMAT_VERSION,
    REFERENCES,
    EmbeddingStore,
    create_template,
    history_line,
)


def prepare_store(
    out: str,
    plan: EmbedPlan,
    opts: EmbedOptions,
    *,
    cube: Cube,
    cell: str,
    ckpt_sha: str,
    checkpoint: str,
    command: str,
    train_range: tuple[str, str] | None = None,
) -> tuple[EmbeddingStore, bool]:
    """The store to write: made anew (``--overwrite``, or none yet) or an unfinished one of the
    same computation, reopened. Returns ``(store, created)``; anything else is refused."""
    present = existing_output(
        out, inputs=[*cube.sources, checkpoint], ours=is_embedding_store, what="embeddings store"
    )
    if present and (opts.overwrite or not is_embedding_store(Path(out))):
        remove_output(out)  # ours (replaced on request) or an empty directory
    elif present:
        existing = EmbeddingStore(out)
        if existing.attrs.get("faextract_inputs_digest") != plan.digest:
            raise FaextractError(
                f"{out}: exists and was made from another checkpoint or input (use --overwrite to replace it)"
            )
        # One task of a job array may start after the others finished the store: its work is
        # done (it writes nothing). A single run asking again is told, as for any output.
        if existing.attrs.get("complete") and opts.shard[1] == 1:
            raise FaextractError(f"{out}: already complete (use --overwrite to recompute it)")
    created = create_template(
        out,
        plan.store_layout(cube, opts),
        _attributes(plan, opts, cube, cell, ckpt_sha, command, train_range),
        zarr_format=opts.zarr_format,
    )
    store = EmbeddingStore(out)
    if not created:
        if store.attrs.get("faextract_inputs_digest") != plan.digest:
            raise FaextractError(
                f"{out}: exists and was made from another checkpoint or input (use --overwrite)"
            )
        check_layout(store, plan.layout(opts))
        check_fingerprint(store, plan.fingerprint)
    return store, created


def _attributes(plan: EmbedPlan, opts: EmbedOptions, cube: Cube, cell: str, ckpt_sha: str,
                command: str, train_range: tuple[str, str] | None = None) -> dict:  # fmt: skip
    """The store's global attributes: CF's, and what a resume or a reader needs to know
    (``faextract_train_range``: the first and last time the encoder trained on, so that
    ``evaluate`` can score the features on time the encoder never saw)."""
    spec = plan.spec
    return {
        "Conventions": "CF-1.8",
        "title": "faextract embeddings",
        "institution": "",
        "source": f"faextract {__version__}; checkpoint sha256 {ckpt_sha}",
        "history": history_line(command),
        "references": REFERENCES,
        "comment": f"embeddings of {', '.join(os.path.basename(s) for s in cube.sources)} "
        f"with a {cell} encoder; channels {', '.join(cube.channels)}"
        + "".join(f"; {dim}={value}" for dim, value in cube.select.items()),
        "faextract_format_version": FORMAT_VERSION,
        "faextract_inputs_digest": plan.digest,
        "faextract_checkpoint_sha256": ckpt_sha,
        "faextract_cell": cell,
        "faextract_channels": json.dumps(list(cube.channels)),
        "faextract_input_fingerprint": json.dumps(plan.fingerprint, sort_keys=True),
        "faextract_perturb": opts.perturb.describe() if opts.perturb else "",
        "faextract_window": f"warmup {spec.warmup} + keep {spec.step} steps; block {plan.block} steps",
        "faextract_layout": json.dumps(plan.layout(opts), sort_keys=True),
        "faextract_train_range": json.dumps(list(train_range) if train_range else None),
    }


class BlockOutputs:
    """One time block's arrays, assembled from its windows' outputs.

    ``embedding``: ``(t, d)`` (one tile) or ``(t, ty, tx, d)`` (tiled), each step from the one
    window that keeps it; ``latent`` and the attention maps: blended across tiles by
    :class:`~faextract.data.tiling.Untiler`.
    """

    def __init__(self, plan: EmbedPlan, queries: dict, b: int):
        self.plan, self.b = plan, b
        self.t0, self.t1 = t0, t1 = plan.span(b)
        tiler = plan.tiler
        ty, tx = tiler.tile_grid
        d = plan.embedding_dim
        shape = (t1 - t0, d) if (ty, tx) == (1, 1) else (t1 - t0, ty, tx, d)
        self.embedding = np.full(shape, np.nan, dtype=np.float32)
        self.untilers: dict[str, Untiler] = {}
        if plan.latent_channels:
            self.untilers["latent"] = Untiler(tiler, plan.latent_channels, t0, t1)
        if plan.attention:
            k, heads = plan.attention
            a0, a1 = t0 // k, -(-t1 // k)
            for name in [
                "attention_received",
                "attention_distance",
                *[f"attention_query_{q}" for q in queries],
                *[f"attention_from_{q}" for q in queries],
            ]:
                self.untilers[name] = Untiler(tiler, heads, a0, a1)

    def add(self, group: list[Window], z: np.ndarray, latent: torch.Tensor, multiple: int) -> None:
        """``z (B, T, d)`` and ``latent (B, T, F, h, w)`` of the windows in ``group``."""
        for j, w in enumerate(group):
            self._embedding(z[j], w)
            if "latent" in self.untilers:
                self.untilers["latent"].add(w, upsample(latent[j].float().cpu(), multiple))

    def _embedding(self, z: np.ndarray, w: Window) -> None:
        keep = self.plan.tiler.time_weight(w) > 0
        for j, t in enumerate(w.time):
            if keep[j] and self.t0 <= t < self.t1:
                if self.embedding.ndim == 2:
                    self.embedding[t - self.t0] = z[j]
                else:
                    self.embedding[t - self.t0, w.tile[0], w.tile[1]] = z[j]

    def finish(self) -> tuple:
        """The item :meth:`EmbeddingStore.write_block` takes."""
        arrays = {"embedding": self.embedding}
        for name, acc in self.untilers.items():
            arrays[name] = acc.result()
        k = self.plan.attention[0] if self.plan.attention else None
        att_slice = slice(self.t0 // k, -(-self.t1 // k)) if k else None
        return self.b, self.t0, self.t1, arrays, att_slice


class BlockWriter(threading.Thread):
    """Writes finished blocks from a queue so the next block computes meanwhile.

    A write that fails ends the thread and keeps the error; the main thread sees it at its next
    :meth:`put` or at :meth:`finish` (never blocked on a full queue nobody drains).
    """

    def __init__(self, store: EmbeddingStore):
        super().__init__(daemon=True)
        self.store = store
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.written = 0

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            try:
                self.store.write_block(*item)
                self.written += 1
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err
                return

    def _offer(self, item) -> bool:
        """Queue ``item`` unless the thread has ended; True if queued."""
        return offer(self.q, item, self.is_alive)

    def put(self, item):
        if self.error or not self._offer(item):
            raise self.error or RuntimeError("the block writer thread ended unexpectedly")

    def finish(self) -> BaseException | None:
        """Write what is queued, stop, and return the error of a failed write (if any)."""
        self._offer(None)
        self.join()
        return self.error
