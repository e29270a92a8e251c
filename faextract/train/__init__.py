"""Self-supervised training of the encoder (``faextract train``).

- :mod:`~faextract.train.loop`: :func:`train`, the job (data -> model -> optimizer ->
  checkpoints), restartable and distributed;
- :mod:`~faextract.train.plan`: what is decided before anything is built (time split, model
  arguments, windows, learning-rate schedule, run directory, resume compatibility);
- :mod:`~faextract.train.losses`: the objective of one batch and its terms;
- :mod:`~faextract.train.evaluation`: validation against climatology and persistence;
- :mod:`~faextract.train.metrics`: ``metrics.csv`` (and TensorBoard).
"""

from faextract.train.loop import TrainResult, train
from faextract.train.metrics import read_metrics

__all__ = ["TrainResult", "read_metrics", "train"]
