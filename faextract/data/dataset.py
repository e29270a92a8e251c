"""Stream normalized windows of a cube to torch, ``(B, T, C, H, W)`` after batching.

:class:`WindowDataset` is an ``IterableDataset``. Each DataLoader worker reopens the cube from a
picklable :class:`CubeSource` (never shares file handles across processes, so it is safe under
the spawn/forkserver start methods), reads whole time blocks once, normalizes them, and cuts
every spatial tile out of the block it holds. Windows are sharded without overlap across
distributed ranks and then across workers; the order is a deterministic function of
``(seed, epoch)``.

It yields whole batches (:class:`~faextract.data.batch.WindowBatch`, ``(B, T, C, H, W)``);
the DataLoader passes them on as they are (``batch_size=None``).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from faextract.data.batch import WindowBatch
from faextract.data.cube import Cube, open_cube
from faextract.data.normalize import ArrayNormalizer
from faextract.data.perturb import Perturbation
from faextract.data.tiling import Tiler, TileSpec, Window
from faextract.data.time import season_phase
from faextract.errors import DataError


@dataclass(frozen=True)
class CubeSource:
    """Everything needed to reopen the same cube in another process."""

    paths: tuple[str, ...]
    variables: tuple[str, ...] | None = None
    levels: tuple[float, ...] | None = None
    dims: dict[str, str] = field(default_factory=dict)
    sort_time: bool = False
    select: dict[str, str] = field(default_factory=dict)
    time_chunk: int = 32
    #: Restrict to time steps ``[start, stop)`` of the full cube (e.g. the training years).
    time_range: tuple[int, int] | None = None

    def open(self) -> Cube:
        cube = open_cube(
            list(self.paths),
            self.variables,
            levels=self.levels,
            dims=self.dims or None,
            sort_time=self.sort_time,
            time_chunk=self.time_chunk,
            select=self.select or None,
        )
        if self.time_range is not None:
            cube = cube.isel_time(slice(*self.time_range))
        return cube


class BlockReader:
    """Reads normalized full-grid time blocks ``(T, C, H, W)``, keeping the last one."""

    def __init__(self, cube: Cube, stats: xr.Dataset, perturb: Perturbation | None = None):
        self.cube = cube
        self.perturb = perturb
        self.normalizer = ArrayNormalizer(
            stats, cube.channels, cube.time, cube.shape[2], cube.shape[3], lat=cube.lat
        )
        self._key: tuple[int, int] | None = None
        self._block: np.ndarray | None = None
        self.phase = season_phase(cube.time.values, cube.calendar).astype(np.float32)

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Normalized steps ``[t0, t1)``; a view when the block read last holds them."""
        if self._key is not None and self._key[0] <= t0 and t1 <= self._key[1]:
            return self._block[t0 - self._key[0] : t1 - self._key[0]]
        block = self.normalizer(self.cube.read(t0, t1), t0, in_place=True)
        if np.isinf(block).any():
            c = int(np.nonzero(np.isinf(block).any(axis=(0, 2, 3)))[0][0])
            raise DataError(
                f"{self.cube.source_label}: variable "
                f"{self.cube.channels[c]!r} has infinite values between steps {t0} and {t1 - 1}"
            )
        if self.perturb is not None:
            self.perturb.apply(block, t0)
        self._key, self._block = (t0, t1), block
        return block

    def preload(self, windows: Sequence[Window]) -> None:
        """Read the time span of ``windows`` in one go; their :meth:`window_batch` calls then
        cut from memory (one read per embedding block instead of one per window)."""
        times = np.concatenate([w.time for w in windows])
        times = times[times >= 0]
        if times.size:
            self.read(int(times.min()), int(times.max()) + 1)

    def window_batch(self, tiler: Tiler, windows: Sequence[Window]) -> WindowBatch:
        """Windows of one shape stacked into a :class:`WindowBatch`, each written once into
        the batch (no per-window arrays to stack afterwards)."""
        first = windows[0]
        shape = (len(windows), first.time.size, self.cube.shape[1], first.lat.size, first.lon.size)
        x = np.empty(shape, dtype=np.float32)
        for j, window in enumerate(windows):
            valid_t = window.time[window.time >= 0]
            t0, t1 = int(valid_t.min()), int(valid_t.max()) + 1
            tiler.extract(self.read(t0, t1), window, time_offset=t0, out=x[j])
        mask = np.isfinite(x)
        np.copyto(x, 0.0, where=~mask)
        time = np.stack([w.time for w in windows]).astype(np.int64)
        lat_i = np.stack([w.lat for w in windows])
        lat = np.where(lat_i >= 0, self.cube.lat[np.maximum(lat_i, 0)], np.nan)
        phase = np.where(time >= 0, self.phase[np.maximum(time, 0)], 0.0)
        return WindowBatch(
            x=torch.from_numpy(x),
            mask=torch.from_numpy(mask),
            phase=torch.from_numpy(phase.astype(np.float32)),
            time=torch.from_numpy(time),
            lat=torch.from_numpy(lat.astype(np.float32)),
            index=torch.tensor([w.index for w in windows], dtype=torch.int64),
        )


class CubeItems(IterableDataset):
    """What every dataset over a cube shares: the cube is reopened in each worker process from
    its picklable :class:`CubeSource` (never a file handle shared across processes), and
    planned items go to workers round-robin (worker w takes items w, w + N, ...: the order in
    which a DataLoader collects them, so the sequence is the same for any number of workers).
    ``channels`` reorders the reopened cube's channels (embed reads in the checkpoint's order).
    """

    def __init__(self, source: CubeSource, *, cube: Cube | None = None, channels=None):
        IterableDataset.__init__(self)  # not super(): a mixin beside it takes other arguments
        self.source = source
        self.channels = tuple(channels) if channels is not None else None
        self._cube = cube

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cube"] = None  # each worker reopens its own
        return state

    def cube(self) -> Cube:
        if self._cube is None:
            cube = self.source.open()
            if self.channels is not None:
                cube = dataclasses.replace(cube, channels=self.channels)
            self._cube = cube
        return self._cube

    @staticmethod
    def _mine(items: list) -> list:
        """This worker's share of ``items`` (all of them outside a DataLoader worker)."""
        info = get_worker_info()
        return items if info is None else items[info.id :: info.num_workers]


class EpochBatches(abc.ABC):
    """How a training dataset walks its items in an epoch: a permutation that is a function
    of ``(seed, epoch)`` when ``shuffle``, shared across distributed ranks (``drop_uneven``
    gives every rank the same number: DDP deadlocks when ranks take different numbers of
    steps), cut into batches of ``batch_size``; ``skip_batches`` resumes an epoch where a
    checkpoint left off. A subclass says what its items are (:meth:`rank_items`)."""

    def __init__(self, *, shuffle: bool, seed: int, rank: int, world_size: int,
                 drop_uneven: bool, batch_size: int):  # fmt: skip
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size, self.drop_uneven = rank, world_size, drop_uneven
        self.batch_size = max(1, int(batch_size))
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @abc.abstractmethod
    def rank_items(self) -> list:
        """This rank's items of the epoch, in order: each dataset says what its items are."""

    def _rank_share(self, items: Sequence) -> list:
        """This rank's share of ``items`` in the epoch's order."""
        order = list(items)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = [order[i] for i in rng.permutation(len(order))]
        if self.drop_uneven:
            order = order[: len(order) // self.world_size * self.world_size]
        return order[self.rank :: self.world_size]

    def _batches(self) -> list[list]:
        """The epoch's remaining batches of this rank (before splitting across workers)."""
        order, bs = self.rank_items(), self.batch_size
        return [order[i : i + bs] for i in range(0, len(order), bs)][self.skip_batches :]

    def __len__(self) -> int:
        return len(self.rank_items())

    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)


class PlannedBatches(CubeItems):
    """Batches of one cube's windows in a planned order: what training's and embedding's
    datasets share, read through one :class:`BlockReader` per worker (see
    :class:`CubeItems`)."""

    def __init__(
        self,
        source: CubeSource,
        stats: xr.Dataset,
        tiler: Tiler,
        *,
        cube: Cube | None = None,
        channels: Sequence[str] | None = None,
        perturb: Perturbation | None = None,
    ):
        super().__init__(source, cube=cube, channels=channels)
        self.stats, self.tiler = stats, tiler
        self.perturb = perturb

    def _reader(self) -> BlockReader:
        return BlockReader(self.cube(), self.stats, self.perturb)

    def batch(self, reader: BlockReader, indices: Sequence[int]) -> WindowBatch:
        return reader.window_batch(self.tiler, [self.tiler.windows[i] for i in indices])


class WindowDataset(PlannedBatches, EpochBatches):
    """Training's windows of a cube, normalized, shuffled per epoch, sharded across ranks and
    workers, as :class:`WindowBatch` es of ``batch_size``.

    ``windows`` restricts the dataset to those window indices; the epoch's order, batches and
    resumption are :class:`EpochBatches`'.
    """

    def __init__(
        self,
        source: CubeSource,
        stats: xr.Dataset,
        spec: TileSpec,
        *,
        windows: Sequence[int] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = False,
        batch_size: int = 1,
        cube: Cube | None = None,
    ):
        cube = cube if cube is not None else source.open()
        tiler = Tiler(spec, (cube.shape[0], cube.shape[2], cube.shape[3]), cube.periodic)
        PlannedBatches.__init__(self, source, stats, tiler, cube=cube)
        EpochBatches.__init__(self, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                              drop_uneven=drop_uneven, batch_size=batch_size)  # fmt: skip
        self.spec = spec
        self.windows = list(range(len(tiler.windows))) if windows is None else list(windows)

    def rank_items(self) -> list[int]:
        """This rank's windows, in iteration order (before splitting across workers)."""
        return self._rank_share(self.windows)


    def __iter__(self):
        reader = self._reader()
        for indices in self._mine(self._batches()):
            yield self.batch(reader, indices)


def _watch_parent(parent_pid: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: end this worker when the process that started the
    loader is gone. Workers started by forkserver or spawn are children of the server, not of
    that process, so PyTorch's own parent check never fires: after a ``kill -9`` of the job
    they lived on (330 MB each)."""
    import threading
    import time

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="faextract-parent-watch", daemon=True).start()


def worker_init(parent_pid: int | None = None):
    """A picklable ``worker_init_fn`` that ends workers with this process."""
    return functools.partial(_watch_parent, parent_pid or os.getpid())


def worker_processes() -> dict:
    """DataLoader arguments for reader processes: forkserver (HDF5 and zarr start threads,
    which a plain fork would copy mid-lock), each watching this process so that none outlives
    a killed job."""
    import multiprocessing as mp

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return dict(multiprocessing_context=method, worker_init_fn=worker_init())


def make_loader(
    dataset: WindowDataset,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader over ``dataset``'s :class:`WindowBatch` es, read by ``num_workers``
    processes (0: in this process)."""
    kwargs = {}
    if num_workers > 0:
        kwargs.update(worker_processes(), prefetch_factor=prefetch_factor, persistent_workers=False)
    return DataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )
