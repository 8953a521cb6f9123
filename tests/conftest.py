"""Shared fixtures: float64 for gradient checks, seeded random arrays."""

import os

import hypothesis
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


# CI runs the property tests on a fixed sequence of examples, so a red run
# can be reproduced; locally they explore.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
  hypothesis.settings.load_profile("ci")
