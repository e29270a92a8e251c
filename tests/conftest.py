"""Shared fixtures: small synthetic cubes written to tmp_path."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from faextract.testing import TINY_RUN

os.environ.setdefault("FAEXTRACT_PLAIN_PROGRESS", "1")
# Build the C kernels afresh for each test session (tests the build; keeps ~/.cache clean).
os.environ.setdefault("FAEXTRACT_KERNEL_CACHE", tempfile.mkdtemp(prefix="faextract-kernels-"))
# Keras is the test oracle for ConvLSTM2D; it must run on torch (no TensorFlow here).
os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture(scope="session")
def small_ds():
    from faextract.testing import synthetic_cube

    return synthetic_cube(nt=60, nlat=12, nlon=24, variables=("sst", "t2m", "sp"), seed=1)


@pytest.fixture
def small_nc(tmp_path, small_ds):
    from faextract.testing import write_netcdf

    path = tmp_path / "cube.nc"
    write_netcdf(small_ds, path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# A model and run small enough to train in seconds on a CPU, with a validation split.
TINY = [*TINY_RUN, "train.warmup_steps=2", "train.log_every=1", "data.val_fraction=0.2"]


@pytest.fixture
def tiny_config(small_nc):
    from faextract.config import load_config

    def make(*extra):
        return load_config(None, [*TINY, f"data.paths=[{small_nc}]", *extra])

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A cube and a checkpoint trained on it for one epoch, shared by the tests that only need
    *a* checkpoint (returns the cube path, the checkpoint path and the dataset)."""
    from faextract.config import load_config
    from faextract.testing import synthetic_cube, write_netcdf
    from faextract.train import train

    root = tmp_path_factory.mktemp("tiny-checkpoint")
    ds = synthetic_cube(nt=40, nlat=12, nlon=24, variables=("sst", "t2m"), seed=3)
    cube = root / "cube.nc"
    write_netcdf(ds, cube)
    cfg = load_config(None, [f"data.paths=[{cube}]", *TINY_RUN, "train.epochs=1"])
    train(cfg, root / "run", plain_progress=True)
    return cube, root / "run" / "last.pt", ds
