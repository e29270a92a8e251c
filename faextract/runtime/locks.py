"""Ownership of an output while a job writes it: a lock file naming the host and process.

Two ``faextract train`` runs into one run directory, or two ``faextract embed`` processes on
the same shard of one store, would both write (every metrics row twice, all work twice, a
history line lost). The second is refused, naming the first. A lock left by a process that
died (same host, process gone) is stale and taken over; one from another host cannot be
checked from here, so the message says which file to remove if that job is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from faextract.errors import FaextractError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Lock:
    """``with Lock(path, "the run directory runs/x"):`` -- held for the block's duration.

    ``wait``: seconds to wait for a live holder to let go (a short critical section shared by
    the tasks of a job array) before refusing; 0 refuses at once.
    """

    def __init__(self, path: str | os.PathLike, what: str, wait: float = 0.0):
        self.path, self.what, self.wait = Path(path), what, float(wait)
        self.mine = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                self._try_acquire()
                return
            except FaextractError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _try_acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise FaextractError(self._busy()) from None
            with os.fdopen(fd, "w") as fh:
                json.dump({**self.mine, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
            self.held = True
            return
        raise FaextractError(self._busy())

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self) -> bool:
        owner = self._owner()
        if not owner:  # unreadable: a writer died between creating and filling it
            return time.time() - self.path.stat().st_mtime > 60
        return owner.get("host") == self.mine["host"] and not _alive(int(owner.get("pid", -1)))

    def _busy(self) -> str:
        o = self._owner()
        return (
            f"{self.what} is in use by process {o.get('pid', '?')} on {o.get('host', '?')} "
            f"(since {o.get('since', '?')}); if that job is gone, remove {self.path}"
        )

    def release(self) -> None:
        if self.held and self._owner().get("pid") == self.mine["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
