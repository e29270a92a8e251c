"""The embed job: :func:`embed` streams a cube through a trained encoder into the store.

Flow: open the cube (checked against the checkpoint: variables, levels, resolution, calendar,
periodicity; axis names and time sorting as in training) -> read each time block once and
normalize it with the checkpoint's statistics, ahead of the model in a thread or in DataLoader
worker processes (:mod:`faextract.data.prefetch`) -> windows with a time warm-up (outputs of
the first ``warmup`` steps of each window are discarded, so the recurrent state has settled;
the very first window starts on padding) and a spatial halo -> the model, in
``torch.inference_mode``, batched, optionally in bf16 -> untile (halo blending) -> the Zarr
store (:mod:`faextract.store`), one time block at a time, by a writer thread so compute and
writes overlap.

Each time block is computed from a fixed set of windows in a fixed order and batch layout,
so a block's bytes do not depend on which process computes it, on ``--shard``, or on whether
the run was interrupted: a resumed or sharded run is bitwise identical to one uninterrupted
process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from faextract.checkpoint import Checkpoint, sha256
from faextract.data.prefetch import BlockBatches, prefetched
from faextract.embed.attention_maps import AttentionAccumulator
from faextract.embed.plan import EmbedOptions, EmbedPlan, EmbedResult, make_plan, open_input
from faextract.embed.writer import BlockOutputs, BlockWriter, prepare_store
from faextract.errors import FaextractError
from faextract.runtime.device import pick_device
from faextract.runtime.locks import Lock
from faextract.runtime.signals import StopFlag
from faextract.store import history_line


def embed(
    inputs,
    checkpoint: str,
    out: str,
    options: EmbedOptions | None = None,
    *,
    command: str = "faextract embed",
    progress=None,
) -> EmbedResult:
    """Embed ``inputs`` with ``checkpoint`` into the Zarr store ``out``; see the module docstring."""
    opts = options or EmbedOptions()
    t_start = time.perf_counter()
    ckpt = Checkpoint.load(checkpoint).require("encoder", checkpoint, command)
    ckpt_sha = sha256(checkpoint)
    source, cube = open_input(inputs, ckpt, opts)
    model = ckpt.build_model()
    device = pick_device(opts.device, option="--device")
    model.to(device)
    if opts.compile:
        model.compile_cells()
    plan = make_plan(ckpt, ckpt_sha, cube, model, opts, out, device)
    store, created = prepare_store(
        out, plan, opts, cube=cube, cell=model.cell_name, ckpt_sha=ckpt_sha,
        checkpoint=checkpoint, command=command, train_range=ckpt.train_range,
    )  # fmt: skip
    # One process per shard of a store: a second one would redo the work and race the first.
    shard_i, shard_n = opts.shard
    with Lock(
        Path(out) / f".faextract-lock-{shard_i}-of-{shard_n}", f"shard {shard_i}/{shard_n} of {out}"
    ):
        if not created:
            store.append_history(history_line(command))
        done = store.done()
        todo = plan.windows([b for b in range(plan.nblocks) if b % shard_n == shard_i and not done[b]])
        batches = BlockBatches(
            source, cube.channels, ckpt.stats, plan.tiler, todo, opts.batch_size, cube=cube,
            perturb=opts.perturb,
        )  # fmt: skip
        task = progress.start("embedding", total=sum(len(w) for _, w in todo)) if progress else None
        writer = BlockWriter(store)
        writer.start()
        prefetch = prefetched(batches, workers=opts.workers, pin=device.type == "cuda")
        waits = _Waits(prefetch)
        try:
            maps = AttentionAccumulator(cube, model.multiple, opts.queries, (plan.attention or (1,))[0], device)
            advance = (lambda n: progress.advance(task, n)) if task is not None else (lambda n: None)
            n_windows, stopped = _embed_blocks(model, plan, opts, waits, maps, writer, device, advance, checkpoint)
        finally:  # on any exit: stop reading, let the writer finish the blocks it holds
            prefetch.close()
            write_error = writer.finish()
        if write_error is not None:
            raise write_error
        if task is not None:
            progress.finish(task)
        complete = store.mark_complete_if_done()
        status = "complete" if complete else ("stopped" if stopped else "partial")
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(out) for f in fs)
        return EmbedResult(
            out, status, writer.written, plan.nblocks, n_windows, time.perf_counter() - t_start,
            size, input_wait=waits.seconds,
        )  # fmt: skip


def _embed_blocks(
    model, plan: EmbedPlan, opts: EmbedOptions, blocks, maps: AttentionAccumulator,
    writer: BlockWriter, device, advance, checkpoint: str,
) -> tuple[int, bool]:  # fmt: skip
    """The model over each block's batches; each finished block goes to ``writer``. Returns
    (windows computed, whether a stop request ended it early)."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    n_windows = 0
    with StopFlag() as stop, torch.inference_mode():
        for b, batches in blocks:  # one time block and its batches
            if stop.requested:
                return n_windows, True
            outputs = BlockOutputs(plan, opts.queries, b)
            for idx, batch in batches:
                group = [plan.tiler.windows[i] for i in idx]
                batch = batch.to(device)
                with amp:
                    latent, z, attn = model.encode(
                        batch.x, batch.mask, batch.phase, batch.step_valid,
                        need_weights=plan.attention is not None,
                    )  # fmt: skip
                z = z.float().cpu().numpy()
                if not np.isfinite(z).all():  # inputs are checked finite: the model failed
                    t0, t1 = plan.span(b)
                    raise FaextractError(
                        f"{checkpoint}: the model produced non-finite embeddings in time block "
                        f"{b} (steps {t0}..{t1 - 1}) from finite input; the store is left "
                        "incomplete"
                    )
                outputs.add(group, z, latent, model.multiple)
                if plan.attention:
                    maps.add(outputs.untilers, attn, group)
                n_windows += len(group)
                advance(len(group))
            writer.put(outputs.finish())
    return n_windows, False


class _Waits:
    """Iterates ``items``, adding up the seconds each ``next`` blocks (the consumer's wait)."""

    def __init__(self, items):
        self.items, self.seconds = items, 0.0

    def __iter__(self):
        it = iter(self.items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item
