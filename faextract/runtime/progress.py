"""Progress for long work: Rich bars on a terminal, plain periodic lines in batch logs.

SLURM and CI capture stdout to files where a redrawn bar is noise, so when stderr is not a
TTY (or ``FAEXTRACT_PLAIN_PROGRESS=1``) each task prints a line at most every ``interval``
seconds and once when it ends, with rate and ETA.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field


@dataclass
class _Task:
    label: str
    total: float | None
    done: float = 0.0
    start: float = field(default_factory=lambda: time.monotonic())
    last_print: float = 0.0
    info: str = ""
    before: float = 0.0  # done before this run (a resumed epoch): not in the rate

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return (self.done - self.before) / elapsed if elapsed > 0 else 0.0


class Progress:
    """A minimal progress reporter: ``start`` a task, ``advance`` it, ``finish`` it."""

    def __init__(
        self, *, plain: bool | None = None, interval: float = 10.0, unit: str = "it", stream=None
    ):
        self.stream = stream or sys.stderr
        if plain is None:
            plain = os.environ.get("FAEXTRACT_PLAIN_PROGRESS") == "1" or not self.stream.isatty()
        self.plain, self.interval, self.unit = plain, interval, unit
        self._tasks: dict[int, _Task] = {}
        self._rich = None
        self._rich_ids: dict[int, int] = {}

    def __enter__(self):
        if not self.plain:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._rich.__enter__()
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        return False

    def note(self, text: str) -> None:
        """One line of information (what a job is doing or decided), above any bars."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def start(self, label: str, total: float | None = None, done: float = 0) -> int:
        """A new task; ``done``: how much of it an earlier run did (a resumed epoch), shown
        as done but left out of the rate and the ETA."""
        tid = len(self._tasks)
        self._tasks[tid] = _Task(label, total, done=done, before=done)
        if self._rich is not None:
            self._rich_ids[tid] = self._rich.add_task(
                label, total=total, completed=done, info="", rate=""
            )
        return tid

    def advance(self, tid: int, n: float = 1, info: str | None = None) -> None:
        task = self._tasks[tid]
        task.done += n
        if info is not None:
            task.info = info
        if self._rich is not None:
            rate = task.rate
            shown = f"{rate:.1f} {self.unit}/s" if rate > 0 else ""
            self._rich.update(self._rich_ids[tid], advance=n, info=task.info, rate=shown)
        elif self.plain:
            now = time.monotonic()
            if now - task.last_print >= self.interval:
                task.last_print = now
                self._line(task)

    def finish(self, tid: int) -> None:
        task = self._tasks[tid]
        if self._rich is not None:
            self._rich.update(self._rich_ids[tid], completed=task.total or task.done)
        elif self.plain:
            self._line(task, final=True)

    def _line(self, task: _Task, final: bool = False) -> None:
        elapsed, rate = time.monotonic() - task.start, task.rate
        parts = [f"[{time.strftime('%H:%M:%S')}] {task.label}:"]
        if task.total:
            parts.append(f"{task.done:g}/{task.total:g} ({100 * task.done / task.total:.0f}%)")
        else:
            parts.append(f"{task.done:g}")
        parts.append(f"{rate:.2f} {self.unit}/s")
        if task.total and rate > 0 and not final:
            parts.append(f"ETA {(task.total - task.done) / rate:.0f}s")
        if final:
            parts.append(f"done in {elapsed:.1f}s")
        if task.info:
            parts.append(task.info)
        print(" ".join(parts), file=self.stream, flush=True)
