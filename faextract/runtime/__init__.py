"""What a job needs from the process it runs in, apart from data and model.

- :mod:`~faextract.runtime.device`: the one rule for choosing a device (``auto``, ``cpu``,
  ``cuda``, ``cuda:N``; one GPU per local rank under torchrun or SLURM);
- :mod:`~faextract.runtime.seeding`: seeds, deterministic kernels, RNG state for resuming;
- :mod:`~faextract.runtime.distributed`: the DDP process group from torchrun's or SLURM's
  environment;
- :mod:`~faextract.runtime.signals`: SIGUSR1/SIGTERM/SIGINT turned into a stop request that a
  job honours at its next safe point;
- :mod:`~faextract.runtime.progress`: Rich bars on a terminal, plain periodic lines in logs;
- :mod:`~faextract.runtime.locks`: one process per run directory or store shard.
"""
