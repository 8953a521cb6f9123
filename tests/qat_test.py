"""Quantization-aware fine-tuning (kshapes_jax.qat and config.quantize): the fake INT8 grids
against NumPy references of onnxruntime's formulas and against the INT8 file onnxruntime writes,
the straight-through gradients, eval mode equal to the deployed network, the refusals, and a
trained run fine-tuned through the trainer and shipped with train.export --int8."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import qat
from tests import runs

HIGHEST = "highest"  # float32 convs compared exactly, on every backend


def _weights_reference(kernel: np.ndarray) -> np.ndarray:
  """onnxruntime's symmetric per-channel int8 weights, dequantized: scale = max|w| / 127."""
  scale = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / 127
  scale = np.where(scale > 0, scale, 1.0)
  return np.clip(np.rint(kernel / scale), -127, 127) * scale


def _input_reference(x: np.ndarray, low: float, high: float) -> np.ndarray:
  """onnxruntime's asymmetric int8 activations of a calibrated [low, high], dequantized."""
  low, high = min(low, 0.0), max(high, 0.0)
  scale = (high - low) / 255 if high > low else 1.0
  zero = np.clip(np.rint(-128 - low / scale), -128, 127)
  q = np.clip(np.rint(x / scale) + zero, -128, 127)
  return (q - zero) * scale


def test_weights_are_on_each_output_channels_grid(rng):
  kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  kernel[..., 2] = 0.0  # a dead channel keeps its zeros
  got = np.asarray(qat.fake_quant_weights(jnp.asarray(kernel)))
  np.testing.assert_allclose(got, _weights_reference(kernel), rtol=1e-6, atol=1e-7)
  assert np.all(got[..., 2] == 0)
  # the channel's largest weight is exactly representable: 127 steps
  np.testing.assert_allclose(
    np.abs(got).max((0, 1, 2))[[0, 1, 3]], np.abs(kernel).max((0, 1, 2))[[0, 1, 3]], rtol=1e-6
  )


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  low=st.floats(-20, 5, allow_nan=False),
  width=st.floats(1e-3, 40, allow_nan=False),
  seed=st.integers(0, 2**16),
)
def test_inputs_are_on_the_calibrated_grid_and_zero_is_exact(low, width, seed):
  """For any calibrated range: onnxruntime's grid, values outside it clipped, 0 kept exactly
  (the padding of a conv is zero in the INT8 file too)."""
  high = low + width
  x = np.random.default_rng(seed).uniform(low - width, high + width, 64).astype(np.float32)
  x[0] = 0.0
  got = np.asarray(qat.fake_quant_input(jnp.asarray(x), jnp.array([low, high], jnp.float32)))
  want = _input_reference(x.astype(np.float64), low, high)
  step = (max(high, 0) - min(low, 0)) / 255
  np.testing.assert_allclose(got, want, atol=step * 1e-3 + 1e-6)
  assert got[0] == 0.0


def test_gradients_are_straight_through(x64):
  kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 5)))
  weight = jnp.linspace(-1.0, 1.0, kernel.size).reshape(kernel.shape)
  grad = jax.grad(lambda k: jnp.sum(qat.fake_quant_weights(k) * weight))(kernel)
  np.testing.assert_array_equal(grad, weight)  # the identity: no weight is clipped
  x = jnp.array([-3.0, -0.9, 0.0, 0.5, 1.9, 2.5])
  grad = jax.grad(lambda v: jnp.sum(qat.fake_quant_input(v, jnp.array([-1.0, 2.0]))))(x)
  # 1 inside the grid's range, 0 where clipped (the range's ends are on the grid's steps)
  np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def trained_acb():
  model = K.models.create("sn", conv="acb", precision=HIGHEST, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (32, 28, 28, 1))
  model(x)  # BN statistics
  model.eval()
  return model, x


def test_eval_mode_is_the_deployed_network_and_training_mode_quantizes_inputs(trained_acb):
  model, x = trained_acb
  deployed = K.deploy(model)
  prepared = qat.prepare(deployed, x)
  plain = [m for _, m in nnx.iter_modules(deployed) if isinstance(m, (K.nn.PlainConv, K.nn.Dense))]
  quantized = [
    m for _, m in nnx.iter_modules(prepared) if isinstance(m, qat.QatConv | qat.QatDense)
  ]
  assert len(quantized) == len(plain) and len(plain) > 2
  trained_like = prepared(x)  # training mode: weights and inputs on their grids
  prepared.eval()
  shipped = K.deploy(prepared)
  np.testing.assert_array_equal(np.asarray(prepared(x)), np.asarray(shipped(x)))
  K.certify(prepared, shipped, x).check()
  # the quantization moved the outputs, and by a few grid steps only
  gap = float(jnp.max(jnp.abs(trained_like - prepared(x))))
  assert 0 < gap < 0.2 * float(jnp.max(jnp.abs(deployed(x))))
  for _, layer in nnx.iter_modules(shipped):
    if isinstance(layer, (K.nn.PlainConv, K.nn.Dense)):
      kernel = np.asarray(layer.kernel[...])
      np.testing.assert_allclose(kernel, _weights_reference(kernel), rtol=1e-6, atol=1e-7)


def test_the_int8_file_holds_the_fine_tuned_weights_exactly(trained_acb, tmp_path):
  """Weights already on the int8 grid are onnxruntime's int8 weights as they are: what QAT
  trained is what the INT8 file computes with."""
  onnx = pytest.importorskip("onnx")
  from onnx import numpy_helper

  model, x = trained_acb
  prepared = qat.prepare(K.deploy(model), x)
  prepared.eval()
  shipped = K.deploy(prepared)
  K.export.save_onnx(shipped, (28, 28, 1), tmp_path / "m.onnx")
  K.int8.quantize_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", np.asarray(x[:16]))
  graph = onnx.load(tmp_path / "m.int8.onnx").graph
  inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
  files = []
  for node in graph.node:
    if (
      node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int8
    ):
      q, scale = inits[node.input[0]], inits[node.input[1]]
      if q.ndim == 4:  # a conv's OIHW weights
        files.append(q.astype(np.float64) * scale.reshape(-1, 1, 1, 1))
  ours = [
    np.asarray(m.kernel[...]).transpose(3, 2, 0, 1)
    for _, m in nnx.iter_modules(shipped)
    if isinstance(m, K.nn.PlainConv)
  ]
  assert len(files) == len(ours) == 4
  for got, want in zip(files, ours, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_prepare_and_calibrate_refuse_what_they_cannot_quantize(trained_acb):
  model, x = trained_acb
  with pytest.raises(ValueError, match="deploy"):
    qat.prepare(model, x)  # the trained ACB network itself, not deployed
  with pytest.raises(ValueError, match="no plain conv or dense"):
    qat.prepare(nnx.Sequential(nnx.BatchNorm(1, rngs=nnx.Rngs(0))), x)
  deployed = K.deploy(model)
  with pytest.raises(ValueError, match="empty"):
    qat.prepare(deployed, x[:0])
  with pytest.raises(ValueError, match="NaN"):
    qat.prepare(deployed, x.at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="input range"):
    qat.fake_quant_input(x, jnp.zeros(3))


def test_a_trained_run_fine_tunes_through_the_trainer_and_ships_in_int8(tmp_path):
  pytest.importorskip("onnxruntime")
  from train import export, trainer

  runs.train(tmp_path / "base", conv="acb")
  qat_run = {
    "quantize.qat": True,
    "quantize.from_run": str(tmp_path / "base"),
    "quantize.calibration": 32,
    "conv": "acb",
  }
  summary = runs.train(tmp_path / "qat", **qat_run)
  assert summary.test_accuracy == summary.deployed_test_accuracy
  results = export.export_run(tmp_path / "qat", int8=True, calibration=32, int8_max_drop=100.0)
  assert results["int8"]["certificate"].int8.calibration == 32
  # the same command again resumes: nothing left to do, the same summary
  assert runs.train(tmp_path / "qat", **qat_run).test_accuracy == summary.test_accuracy
  # the trained run must be there, of the same data
  with pytest.raises(trainer.ConfigError, match="not a trained run"):
    runs.train(tmp_path / "other", **{**qat_run, "quantize.from_run": str(tmp_path / "none")})
  with pytest.raises(trainer.ConfigError, match="trained on"):
    runs.train(tmp_path / "other", **{**qat_run, "data.name": "cifar10"})
  with pytest.raises(trainer.ConfigError, match="quantize.from_run"):
    runs.train(tmp_path / "other", **{"quantize.qat": True})
