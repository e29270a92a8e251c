"""A run's record of itself: ``metrics.csv`` (and TensorBoard when it is installed).

The CSV is append-only and survives restarts: a resumed run continues the same file, and rows
a killed process wrote after its last checkpoint are dropped before they are written again.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

#: The encoder's columns (a job names its own: :attr:`faextract.train.jobs.EncoderJob.metrics`).
METRIC_FIELDS = [
    "kind", "epoch", "step", "lr", "loss", "recon", "forecast", "embedding", "decorrelation", "cluster",
    "windows_per_s", "climatology", "persistence", "time",
]  # fmt: skip


class MetricsWriter:
    """Append-only ``metrics.csv``; inactive (writes nothing) on ranks other than 0."""

    def __init__(self, path: Path, active: bool, fields=tuple(METRIC_FIELDS)):
        self.path, self.active, self.fields = path, active, list(fields)
        if active and not path.exists():
            with open(path, "w", newline="") as fh:
                csv.DictWriter(fh, self.fields).writeheader()

    def drop_after(self, step: int) -> None:
        """Remove the rows of steps after ``step`` (written, then lost with the process)."""
        if not self.active or not self.path.exists():
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if not r.get("step") or int(r["step"]) <= step]
        if len(keep) == len(rows):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.fields)
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, self.path)

    def write(self, **row) -> None:
        if not self.active:
            return
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        clean = {
            k: (f"{v:.6g}" if isinstance(v, float) else v)
            for k, v in row.items()
            if k in self.fields
        }
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields).writerow(clean)


def tensorboard(run_dir: Path):
    """A TensorBoard writer in ``run_dir/tensorboard``, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def read_metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))
