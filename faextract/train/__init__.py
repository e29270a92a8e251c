"""Training (``faextract train``): the feature encoder, or a learned compressor.

- :mod:`~faextract.train.loop`: :func:`train`, the loop (data -> job -> optimizer ->
  checkpoints), restartable and distributed;
- :mod:`~faextract.train.jobs`: what is trained: the encoder or a compressor (model,
  datasets, loss, validation, what the checkpoint records);
- :mod:`~faextract.train.plan`: what is decided before anything is built (time split, model
  arguments, windows, learning-rate schedule, run directory, resume compatibility);
- :mod:`~faextract.train.losses`: the objective of one batch and its terms;
- :mod:`~faextract.train.evaluation`: validation against climatology and persistence;
- :mod:`~faextract.train.metrics`: ``metrics.csv`` (and TensorBoard).
"""

from faextract.train.loop import TrainResult, train
from faextract.train.metrics import read_metrics

__all__ = ["TrainResult", "read_metrics", "train"]
