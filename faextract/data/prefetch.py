"""Embedding's input: the batches of each time block, prepared ahead of the model.

A *plan* lists the blocks to compute, each with the indices of its windows in the
:class:`~faextract.data.tiling.Tiler`. :class:`BlockBatches` turns a plan into one item per
block: ``(block, [(window indices, WindowBatch), ...])`` (:class:`~faextract.data.batch.WindowBatch`,
``(B, T, C, H, W)``).
Each block's time span is read once.

Two ways to run it ahead of the model (:func:`prefetched`):

- ``workers=0``: a thread in this process (:class:`ThreadPrefetcher`); cheap to start, and on
  few cores the best choice (measured on 2 cores: a worker process gained nothing);
- ``workers=N``: N DataLoader worker processes, each reopening the cube from a picklable
  :class:`~faextract.data.dataset.CubeSource`; worker w reads blocks w, w+N, ..., which is the
  order in which the DataLoader hands them back, so the sequence is the same for any N. Their
  reading and normalizing do not share the model's interpreter lock: worth it on GPU nodes
  with cores to spare.

A user-facing error in a worker (e.g. infinite values in the input) comes back as the same
one-line :class:`~faextract.errors.FaextractError`, not as a worker traceback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import xarray as xr
from torch.utils.data import DataLoader

from faextract.data.cube import Cube
from faextract.data.dataset import CubeSource, PlannedBatches, worker_processes
from faextract.data.perturb import Perturbation
from faextract.data.tiling import Tiler
from faextract.errors import FaextractError

Plan = list[tuple[int, list[int]]]  # (block, indices of its windows in the tiler)


class _Failed:
    """A user-facing error raised while preparing batches, carried to the consumer."""

    def __init__(self, error: FaextractError):
        self.error = error


class BlockBatches(PlannedBatches):
    """One item per planned block: its batches, in a fixed layout (see the module docstring)."""

    def __init__(
        self,
        source: CubeSource,
        channels: tuple[str, ...],
        stats: xr.Dataset,
        tiler: Tiler,
        plan: Plan,
        batch_size: int,
        cube: Cube | None = None,
        perturb: Perturbation | None = None,
    ):
        super().__init__(source, stats, tiler, cube=cube, channels=channels, perturb=perturb)
        self.plan, self.batch_size = list(plan), int(batch_size)

    def __iter__(self) -> Iterator[tuple | _Failed]:
        try:
            reader = self._reader()
            for b, idx in self._mine(self.plan):
                reader.preload([self.tiler.windows[i] for i in idx])
                batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
                yield b, [(group, self.batch(reader, group)) for group in batches]
        except FaextractError as err:
            yield _Failed(err)


def prefetched(dataset: BlockBatches, *, workers: int = 0, pin: bool = False):
    """An iterable over ``dataset``'s blocks prepared ahead; call ``.close()`` when done."""
    if workers > 0:
        return _LoaderPrefetcher(dataset, workers, pin)
    return ThreadPrefetcher(dataset, pin)


def offer(q: queue.Queue, item, keep_trying) -> bool:
    """Put ``item`` on ``q`` while ``keep_trying()`` holds; True if it went in. A plain blocking
    ``put`` would wait forever on a full queue whose consumer has gone."""
    while keep_trying():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _unwrap(item):
    if isinstance(item, _Failed):
        raise item.error
    return item


class ThreadPrefetcher(threading.Thread):
    """Prepares the next blocks in a thread while the model runs on the current one."""

    _DONE = object()

    def __init__(self, source, pin: bool = False, depth: int = 2):
        super().__init__(daemon=True)
        self.source, self.pin = source, pin
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.start()

    def _offer(self, item) -> bool:
        return offer(self.q, item, lambda: not self.stop.is_set())

    def run(self):
        try:
            for item in self.source:
                if self.pin and not isinstance(item, _Failed):
                    b, batches = item
                    item = b, [(idx, batch.pin_memory()) for idx, batch in batches]
                if not self._offer(item):
                    return
            self._offer(self._DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            self._offer(err)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield _unwrap(item)

    def close(self):
        self.stop.set()
        while self.is_alive():
            try:
                self.q.get(timeout=0.1)
            except queue.Empty:
                pass
        self.join()


class _LoaderPrefetcher:
    """DataLoader worker processes (forkserver: safe with HDF5 and zarr threads)."""

    def __init__(self, dataset: BlockBatches, workers: int, pin: bool):
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin,
            prefetch_factor=2,
            **worker_processes(),
        )
        self._it = None

    def __iter__(self):
        self._it = iter(self.loader)
        for item in self._it:
            yield _unwrap(item)

    def close(self):
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it = None
