"""Shared fixtures: float64 for gradient checks, seeded random arrays; one JAX compilation
cache for the session."""

import os
import shutil
import tempfile

# One compilation cache for every process of the session: the controller makes it, and the xdist
# workers and the subprocesses the tests start inherit these variables, so a program compiled once
# (a tiny run's train step, a deployed net) is loaded, not compiled again, by the next test or
# process that builds it. JAX reads them when it is first imported, which no test has done yet.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kshapes-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from train.trainer import determinism  # noqa: E402

# What `python -m train.main` asks for: deterministic GPU ops, so the resume tests that run
# in this process hold on a GPU. XLA reads the flag when JAX starts its backend, which no
# test has done yet.
os.environ["XLA_FLAGS"] = determinism.with_flag(os.environ.get("XLA_FLAGS", ""))

import hypothesis  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402


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
if os.environ.get("KSHAPES_EMULATE_TF32"):  # see tests/tf32_emulation.py
  from tests import tf32_emulation

  tf32_emulation.install()

hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
  hypothesis.settings.load_profile("ci")


def _randomize(module, rng):
  """Non-trivial BN statistics and affine terms, and ACU positions, so deploy has work."""
  from kshapes_jax.nn import ActiveConv

  for _, m in nnx.iter_modules(module):
    if isinstance(m, nnx.BatchNorm):
      c = m.mean[...].shape[0]
      m.mean[...] = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)
      m.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
      m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
      m.bias[...] = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)
    if isinstance(m, ActiveConv):
      m.positions[...] = jnp.asarray(rng.uniform(-1.5, 1.5, m.positions[...].shape), jnp.float32)


@pytest.fixture
def randomize():
  """randomize(module, rng): see _randomize."""
  return _randomize


def pytest_unconfigure(config):
  """The session's compilation cache goes with it (the controller made it; workers leave it)."""
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
