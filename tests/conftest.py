"""Shared fixtures: small synthetic cubes written to tmp_path."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

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
