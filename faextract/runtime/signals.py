"""Graceful stops: SLURM sends SIGUSR1 (``--signal=USR1@secs``) or SIGTERM before a time limit.

Long jobs check :attr:`StopFlag.requested` at safe points (a training step, an embedding
block), save their state, and stop cleanly instead of dying mid-write. Besides signals, the
file named by ``FAEXTRACT_STOP_FILE`` requests a stop when it appears: the batch scripts in
``slurm/`` touch it from their signal trap, which reaches every process of a multi-node
``srun``/``torchrun`` job where forwarding a signal would not.

A stopped job exits with :data:`EXIT_STOPPED` (75, ``EX_TEMPFAIL``): "rerun me to continue".
"""

from __future__ import annotations

import os
import signal

EXIT_STOPPED = 75


class StopFlag:
    """Context manager: while active, SIGUSR1/SIGTERM set ``requested`` instead of killing.

    Flags nest and share one state: the commands hold one from their first line, so a signal
    that arrives while a job is still starting (loading a model, creating a store) is kept
    and honoured at the job's first safe point instead of killing the process mid-write.
    The state clears when the outermost flag exits.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
    _depth = 0
    _signalled = False

    def __init__(self):
        self._old = {}
        self.stop_file = os.environ.get("FAEXTRACT_STOP_FILE") or None

    @property
    def requested(self) -> bool:
        return StopFlag._signalled or (
            self.stop_file is not None and os.path.exists(self.stop_file)
        )

    def __enter__(self):
        StopFlag._depth += 1
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner thread)
                pass
        return self

    @staticmethod
    def _handle(signum, frame):
        StopFlag._signalled = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        StopFlag._depth -= 1
        if StopFlag._depth == 0:
            StopFlag._signalled = False
        return False
