"""Shared fixtures: float64 for gradient checks, seeded random arrays."""

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
  """Runs the test with jax_enable_x64 on, restoring the setting after."""
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng():
  return np.random.default_rng(0)
