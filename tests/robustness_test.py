"""What users do to runs and to the library: bad inputs, damaged checkpoints, two runs, stops.

Each case of the hostile-input review (issue 14) is kept here: the input and the one line a
user sees. The trainer's cases run in this process; the command line's in subprocesses.
"""

import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from train_test import REPO, small_config

import kshapes_jax as K
from kshapes_jax import conv as conv_lib
from kshapes_jax import kernels
from kshapes_jax import nn as knn
from train import data as pipeline
from train import trainer
from train.cli import one_line
from train.data import memory
from train.trainer import experiment, logger, trained_run
from train.trainer.checkpoints import CheckpointError, Checkpoints
from train.trainer.rundir import RunDir, RunDirError

X = jnp.ones((1, 6, 6, 2))
RNGS = nnx.Rngs(0)
BN = kernels.BatchNormParams(jnp.ones(2), jnp.zeros(2), jnp.zeros(2), jnp.ones(2))

# ------------------------------------------------------------------ the library: input -> message

LIBRARY_ERRORS = [
  (
    "conv(stride=1.5)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), stride=1.5),
    r"stride must be a positive int or a pair of them, got 1.5",
  ),
  (
    "conv(padding=-1)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=-1),
    r"padding must be .* an int >= 0 .* got -1",
  ),
  (
    "conv(padding=((0, -1), (0, 0)))",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=((0, -1), (0, 0))),
    r"padding must be .* got \(\(0, -1\), \(0, 0\)\)",
  ),
  (
    "conv(padding=True)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=True),
    r"padding must be .* got True",
  ),
  (
    "conv(groups=True)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), groups=True),
    r"groups = True",
  ),
  (
    "PlainConv(k=-3)",
    lambda: knn.PlainConv(2, 2, -3, rngs=RNGS),
    r"PlainConv kernel_size must be an int >= 1",
  ),
  (
    "PlainConv(out=-8)",
    lambda: knn.PlainConv(2, -8, rngs=RNGS),
    r"PlainConv out_features must be an int >= 1",
  ),
  (
    "PlainConv(in=4.5)",
    lambda: knn.PlainConv(4.5, 2, rngs=RNGS),
    r"PlainConv in_features must be an int >= 1",
  ),
  ("PlainConv(no rngs)", lambda: knn.PlainConv(2, 2), r"PlainConv needs rngs=nnx.Rngs\(seed\)"),
  (
    "PlainConv(padding=-1)",
    lambda: knn.PlainConv(2, 2, padding=-1, rngs=RNGS),
    r"padding must be .* got -1",
  ),
  (
    "PlainConv(stride=0)",
    lambda: knn.PlainConv(2, 2, stride=0, rngs=RNGS),
    r"PlainConv stride must be",
  ),
  (
    "ACBlock(padding=True)",
    lambda: knn.ACBlock(2, 2, padding=True, rngs=RNGS),
    r"ACBlock padding must be an int",
  ),
  (
    "RotateConv(out=0)",
    lambda: knn.RotateConv(2, 0, rngs=RNGS),
    r"RotateConv out_features must be an int >= 1",
  ),
  (
    "VersatileConv(no rngs)",
    lambda: knn.VersatileConv(2, 4, rngs=None),
    r"VersatileConv needs rngs",
  ),
  (
    "ActiveConv(synapses=0)",
    lambda: knn.ActiveConv(2, 2, synapses=0, rngs=RNGS),
    r"ActiveConv synapses must be an int >= 2, got 0",
  ),
  (
    "ActiveConv(synapses=-1)",
    lambda: knn.ActiveConv(2, 2, synapses=-1, rngs=RNGS),
    r"synapses must be an int >= 2",
  ),
  (
    "ActiveConv(position_groups=0)",
    lambda: knn.ActiveConv(2, 2, position_groups=0, rngs=RNGS),
    r"ActiveConv position_groups must be an int >= 1, got 0",
  ),
  (
    "ActiveConv(radius=True)",
    lambda: knn.ActiveConv(2, 2, radius=True, rngs=RNGS),
    r"radius must be an int >= 1",
  ),
  (
    "ActiveConv(radius=100000)",
    lambda: knn.ActiveConv(2, 2, radius=100000, rngs=RNGS),
    r"radius 100000 gives a \(200001\)\^2 x 4 kernel",
  ),
  (
    "create(num_classes=-5)",
    lambda: K.models.create("sn", num_classes=-5),
    r"num_classes must be an int >= 1",
  ),
  (
    "create(num_classes=0)",
    lambda: K.models.create("sn", num_classes=0),
    r"num_classes must be an int >= 1, got 0",
  ),
  ("create(rngs=0)", lambda: K.models.create("sn", rngs=0), r"sn needs rngs=nnx.Rngs"),
  (
    "active_kernel(radius=100000)",
    lambda: kernels.active_kernel(jnp.ones((9, 2, 3)), jnp.zeros((9, 2)), 100000),
    r"radius 100000 gives .* more than the 2\^31 - 1 elements",
  ),
  (
    "active_kernel(radius=True)",
    lambda: kernels.active_kernel(jnp.ones((9, 2, 3)), jnp.zeros((9, 2)), True),
    r"radius must be an int >= 1, got True",
  ),
  (
    "active_conv_gather(radius=False)",
    lambda: conv_lib.active_conv_gather(X, jnp.ones((9, 2, 2)), jnp.zeros((9, 2)), radius=False),
    r"radius must be an int >= 1, got False",
  ),
  (
    "fuse_bn(var=-1)",
    lambda: kernels.fuse_bn(jnp.ones((3, 3, 1, 2)), *BN._replace(var=-jnp.ones(2))),
    r"var must be > -eps .* got min -1.0",
  ),
  (
    "fuse_acb(eps=-1)",
    lambda: kernels.fuse_acb(jnp.ones((3, 3, 1, 2)), BN, eps=-1.0),
    r"eps must be a finite float >= 0, got -1.0",
  ),
  (
    "fuse_bn(eps=nan)",
    lambda: kernels.fuse_bn(jnp.ones((3, 3, 1, 2)), *BN, eps=float("nan")),
    r"eps must be",
  ),
]


def _sn(conv="plain", train=False):
  model = K.models.create("sn", conv=conv, rngs=nnx.Rngs(0))
  model.train() if train else model.eval()
  return model


SHIPPING_ERRORS = [
  (
    "save_onnx(not deployed)",
    lambda tmp: K.export.save_onnx(_sn("rotate4"), (28, 28, 1), tmp / "m.onnx"),
    ValueError,
    r"ONNX export takes the deployed network, and .* is a RotateConv: export "
    r"kshapes_jax.deploy\(model\)",
  ),
  (
    "save_onnx(train mode)",
    lambda tmp: K.export.save_onnx(
      K.models.create("resnet20", rngs=nnx.Rngs(0)), (32, 32, 3), tmp / "m.onnx"
    ),
    ValueError,
    r"the model is in train mode \(.*BatchNorm on batch statistics\)",
  ),
  (
    "save_jax(normalize of 3 channels, 1-channel images)",
    lambda tmp: K.export.save_jax(
      K.deploy(_sn()), (28, 28, 1), tmp / "m.jax", normalize=((0.5,) * 3, (0.2,) * 3)
    ),
    ValueError,
    r"normalize's mean has 3 values; the images have 1 channels",
  ),
  (
    "a model fed another image size",
    lambda tmp: _sn()(jnp.zeros((2, 32, 32, 1))),
    ValueError,
    r"Dense\(\d+ -> \d+\) expects inputs of \d+ features .* of another size than it was built",
  ),
  ("deploy(not a module)", lambda tmp: K.deploy({"kernel": 1}), TypeError, "deploy takes a flax"),
  (
    "save_onnx(bf16)",
    lambda tmp: K.export.save_onnx(
      K.deploy(K.models.create("sn", dtype="bfloat16", rngs=nnx.Rngs(0))), (28, 28, 1), tmp / "m"
    ),
    ValueError,
    r"computes in bfloat16, .* export kshapes_jax.export.in_float32\(model\)",
  ),
]


@pytest.mark.parametrize(
  "case, call, error, message", SHIPPING_ERRORS, ids=[c[0] for c in SHIPPING_ERRORS]
)
def test_shipping_a_model_it_cannot_says_what_to_do(tmp_path, case, call, error, message):
  pytest.importorskip("onnx")
  with pytest.raises(error, match=message):
    call(tmp_path)
  assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_bfloat16_run_exports_to_onnx_in_float32(tmp_path):
  pytest.importorskip("onnxruntime")
  from train import export

  _train(tmp_path, dtype="bfloat16", num_steps=2)
  results = export.export_run(tmp_path, ("onnx", "jax"), check_images=0)
  assert results["onnx"]["dtype"] == "float32" and results["onnx"]["agreement"] == 1.0
  assert results["jax"]["dtype"] == "bfloat16" and results["jax"]["agreement"] == 1.0
  assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
    "model.jaxexport",
    "model.jaxexport.certificate.json",
    "model.onnx",
  ]
  # the deployed bf16 network against the trained one, in the ONNX file and next to the artifact
  import kshapes_jax as K

  for name in ("model.onnx", "model.jaxexport"):
    certificate = K.export.read_certificate(tmp_path / "export" / name)
    assert certificate == results["onnx"]["certificate"] and certificate.agreement == 1.0
    assert certificate.logits_relative < K.certificate.TOLERANCE["bfloat16"]


LIBRARY_ERRORS += [
  (
    "conv(NCHW input)",
    lambda: conv_lib.conv(jnp.zeros((2, 3, 8, 8)), jnp.zeros((3, 3, 3, 4))),
    r"x \(2, 3, 8, 8\) looks NCHW \(PyTorch's layout\): pass NHWC, x.transpose\(0, 2, 3, 1\)",
  ),
  (
    "conv(OIHW kernel)",
    lambda: conv_lib.conv(jnp.zeros((2, 8, 8, 3)), jnp.zeros((4, 3, 5, 5))),
    r"the kernel \(4, 3, 5, 5\) looks OIHW .* kernel.transpose\(2, 3, 1, 0\)",
  ),
]


@pytest.mark.parametrize("case, call, message", LIBRARY_ERRORS, ids=[c[0] for c in LIBRARY_ERRORS])
def test_library_rejects_what_it_cannot_mean_with_a_message_naming_the_argument(
  case, call, message
):
  with pytest.raises(ValueError, match=message):
    call()


def test_layers_crop_internally_where_their_own_padding_asks_for_it(rng):
  # padding 0 gives the ACB's 1x3 branch a row pad of -1 and a deployed small-radius ACU too;
  # the layers may crop, a user's padding may not
  x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
  acb = knn.ACBlock(3, 4, padding=0, rngs=nnx.Rngs(1))
  assert acb(x).shape == (2, 5, 5, 4)
  acu = knn.ActiveConv(3, 4, kernel_size=5, padding=0, synapses=9, radius=1, rngs=nnx.Rngs(1))
  deployed = acu.deploy()
  assert deployed.padding == -1
  np.testing.assert_allclose(deployed(x), acu(x), atol=1e-5)


def test_integer_inputs_to_the_acu_give_float_bilinear_weights():
  # integers used to make the bilinear weights integers: every synapse landed on its cell corner
  pos = np.array([[0.0, 0.0], [1.5, 0.5], [-0.5, 1.0]], np.float32)
  w_int, w_float = np.ones((3, 1, 1), np.int32), np.ones((3, 1, 1), np.float32)
  k_int, k_float = kernels.active_kernel(w_int, pos, 2), kernels.active_kernel(w_float, pos, 2)
  assert jnp.issubdtype(k_int.dtype, jnp.floating)
  np.testing.assert_array_equal(k_int, k_float)
  assert float(k_int[2, 3, 0, 0]) == 0.25  # (1.5, 0.5): a quarter on each of four taps
  x_int = np.arange(49, dtype=np.int32).reshape(1, 7, 7, 1)
  y_int = conv_lib.active_conv_gather(x_int, w_int, pos, radius=2)
  y_float = conv_lib.active_conv_gather(x_int.astype(np.float32), w_float, pos, radius=2)
  assert jnp.issubdtype(y_int.dtype, jnp.floating)
  np.testing.assert_allclose(y_int, y_float)
  assert float(y_int[0, 3, 3, 0]) == 24 + (24 + 1.5 + 7 * 0.5) + (24 - 0.5 + 7)


# ------------------------------------------------------------------ data


def _write_npz(directory: Path, images, labels) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  for name in ("train", "test"):
    np.savez(directory / f"{name}.npz", image=images, label=labels)


def test_npz_float_images_in_0_1_are_scaled_not_zeroed(tmp_path, rng):
  pixels = rng.integers(0, 256, size=(8, 28, 28, 1))
  _write_npz(tmp_path, (pixels / 255.0).astype(np.float32), np.arange(8) % 10)
  train_split, _ = memory.load_npz_dir(tmp_path)
  np.testing.assert_array_equal(train_split.images, pixels.astype(np.uint8))


@pytest.mark.parametrize(
  "images, message",
  [
    (
      np.full((4, 28, 28), 300, np.int32),
      r"int32 images span \[300, 300\]; integers must lie in \[0, 255\]",
    ),
    (
      np.full((4, 28, 28), -1.0, np.float32),
      r"float32 images span \[-1.0, -1.0\]; floats must lie in \[0, 1\]",
    ),
    (np.full((4, 28, 28), np.nan, np.float32), r"images hold NaN or inf"),
    (
      np.zeros((4, 28, 28), bool),
      r"images must be uint8, integers in \[0, 255\] or floats in \[0, 1\], got bool",
    ),
  ],
)
def test_npz_images_that_a_cast_would_corrupt_are_refused_naming_the_file(
  tmp_path, images, message
):
  _write_npz(tmp_path, images, np.zeros(4, np.int64))
  with pytest.raises(pipeline.DataError, match=str(tmp_path / "train.npz") + ".*" + message):
    memory.load_npz_dir(tmp_path)


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
    int(n).to_bytes(4, "big") for n in array.shape
  )
  return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
  "damage, message",
  [
    ("truncated_gzip", r"cannot be read \(EOFError"),
    ("crc", r"cannot be read \(BadGzipFile: CRC check failed"),
    ("not_gzip", r"cannot be read \(BadGzipFile: Not a gzipped file"),
    ("truncated_body", r"header says \(5, 28, 28\) but the file holds 3000 values"),
    ("truncated_header", r"truncated IDX header"),
  ],
)
def test_damaged_idx_files_name_the_file(tmp_path, damage, message):
  data = gzip.compress(_idx_bytes(np.zeros((5, 28, 28))))
  raw = _idx_bytes(np.zeros((5, 28, 28)))
  path = tmp_path / "train-images-idx3-ubyte.gz"
  if damage == "truncated_gzip":
    path.write_bytes(data[: len(data) // 2])
  elif damage == "crc":
    path.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])
  elif damage == "not_gzip":
    path.write_bytes(raw)
  elif damage == "truncated_body":
    path.write_bytes(gzip.compress(raw[: 16 + 3000]))
  else:
    path.write_bytes(gzip.compress(raw[:9]))
  with pytest.raises(pipeline.DataError, match=str(path) + r".*" + message):
    memory.read_idx(path)


# ------------------------------------------------------------------ configs: input -> message

CONFIG_ERRORS = [
  (
    {"conv": "plain", "conv_options.radius": 3},
    r"conv_options.radius does not apply to conv 'plain'",
  ),
  (
    {"conv": "acb", "conv_options.normalize_grad": False},
    r"conv_options.normalize_grad does not apply to conv 'acb'; it takes \['asym_scale_init', "
    r"'asym_size', 'asymmetric'",
  ),
  ({"optim.momentum": 5.0}, r"optim: momentum must be in \[0, 1\), got 5.0"),
  ({"optim.weight_decay": -1.0}, r"optim: weight_decay must be >= 0 and finite, got -1.0"),
  (
    {"optim.learning_rate": float("nan")},
    r"optim.learning_rate: learning rate must be > 0 and finite, got nan",
  ),
  (
    {"optim.boundaries": (20, 10)},
    r"optim.boundaries \(epochs\): schedule boundaries must be positive and increasing",
  ),
  ({"data.train_size": 0}, r"data.train_size must be an int in \[1, inf\), got 0"),
  ({"seed": -1}, r"seed must be an int in \[0, 4294967295\], got -1"),
  ({"num_steps": -3}, r"num_steps must be an int in \[0, inf\), got -3"),
  ({"max_loss_factor": -1.0}, r"max_loss_factor must be a number in \[0, inf\)"),
]


@pytest.mark.parametrize(
  "overrides, message", CONFIG_ERRORS, ids=[str(c[0]) for c in CONFIG_ERRORS]
)
def test_bad_config_values_fail_before_the_data_loads(tmp_path, monkeypatch, overrides, message):
  monkeypatch.setattr(pipeline, "load", lambda *_: pytest.fail("the data was loaded"))
  with pytest.raises(trainer.ConfigError, match=message):
    trainer.train_and_evaluate(small_config(**overrides), tmp_path)


def test_unknown_config_keys_are_refused(tmp_path):
  config = small_config()
  with config.unlocked():
    config.lr = 0.1
    config.optim.lr_multipliers["angles"] = 2.0  # a free-form block: its keys are labels
  with pytest.raises(trainer.ConfigError, match=r"unknown config key\(s\) \['lr'\]"):
    trainer.train_and_evaluate(config, tmp_path)


def test_conv_options_are_declared_for_every_option_of_every_kind():
  from configs import default

  config = default.get_config()
  for name, kind_type in knn.conv_options().items():
    assert config.conv_options[name] is None
    assert kind_type in (int, str, bool, float)
  # every keyword a shaped layer takes beyond a plain conv's arguments is an option of its kind
  import inspect

  for kind in knn.CONV_KINDS.values():
    taken = set(inspect.signature(kind.layer.__init__).parameters)
    arrays = {"kernel", "bias"} if kind.layer is knn.PlainConv else set()  # from_kernel's
    missing = taken - set(knn.kinds.SHARED_ARGUMENTS) - set(kind.options()) - set(kind.fixed)
    assert not missing - arrays, (kind.name, missing)


# ------------------------------------------------------------------ checkpoints


def _train(workdir, **overrides):
  return trainer.train_and_evaluate(small_config(**overrides), workdir)


def _damage(step_dir: Path, how: str) -> None:
  state = step_dir / "state"
  # ocdbt's data
  data_files = sorted(p for p in state.rglob("*") if p.is_file() and p.parent.name == "d")
  if how == "array_edited":  # one number changed, saved soundly: only the checksum tells
    checkpointer = ocp.StandardCheckpointer()
    leaves, treedef = jax.tree_util.tree_flatten(checkpointer.restore(state))
    largest = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
    leaves[largest] = np.array(leaves[largest])
    leaves[largest].flat[0] += 1
    shutil.rmtree(state)
    checkpointer.save(state, jax.tree_util.tree_unflatten(treedef, leaves))
    checkpointer.wait_until_finished()
  elif how == "bit_flip":  # mid-file: hits a compressed chunk (unreadable) or raw bytes (checksum)
    target = max(data_files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))
  elif how == "data_deleted":
    for p in data_files:
      p.unlink()
  elif how == "data_truncated":
    for p in data_files:
      p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
  elif how == "metadata_missing":
    (state / "_METADATA").unlink()
  elif how == "history_garbled":
    (step_dir / "history" / "metadata").write_text('[{"epoch": 1, "train_loss": 9.0')
  elif how == "empty_step_dir":
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize(
  "how",
  [
    "array_edited",
    "bit_flip",
    "data_deleted",
    "data_truncated",
    "metadata_missing",
    "history_garbled",
    "empty_step_dir",
  ],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path, how):
  clean = _train(tmp_path / "clean", num_steps=8, checkpoint_every_steps=2, keep_checkpoints=10)
  _train(tmp_path / "run", num_steps=6, checkpoint_every_steps=2, keep_checkpoints=10)
  rundir = RunDir(tmp_path / "run")
  assert rundir.checkpoints.steps() == [2, 4, 6]
  _damage(rundir.checkpoint_dir / "6", how)
  with pytest.raises(CheckpointError, match="checkpoint 6 in .* is damaged"):
    rundir.checkpoints.restore(
      jax.device_put(experiment.build(small_config()).initial_state()), step=6
    )
  resumed = _train(tmp_path / "run", num_steps=8, checkpoint_every_steps=2, keep_checkpoints=10)
  assert (rundir.damaged_dir / "6").is_dir()  # kept aside, not deleted
  assert resumed.test_loss == clean.test_loss
  _assert_same_run(tmp_path / "run", tmp_path / "clean")


def test_restore_says_which_step_is_damaged_and_when_all_are(tmp_path, capsys):
  _train(tmp_path, num_steps=4, checkpoint_every_steps=2)
  rundir = RunDir(tmp_path)
  _damage(rundir.checkpoint_dir / "4", "array_edited")
  _damage(rundir.checkpoint_dir / "2", "bit_flip")
  like = jax.device_put(experiment.build(small_config()).initial_state())
  said = []
  with pytest.raises(
    CheckpointError, match=r"every checkpoint in .* is damaged \(steps \[4, 2\]\)"
  ):
    RunDir(tmp_path).checkpoints.restore(like, say=said.append)
  assert said[0].startswith(
    "checkpoint 4 is damaged (its arrays or history do not match the checksum"
  )
  assert said[0].endswith("trying step 2")
  assert RunDir(tmp_path).checkpoints.steps() == [2, 4]  # a reader moves nothing


def test_a_checkpoint_under_another_steps_name_is_not_taken_for_that_step(tmp_path, capsys):
  clean = _train(tmp_path / "clean", num_steps=8, checkpoint_every_steps=2, keep_checkpoints=10)
  _train(tmp_path / "run", num_steps=4, checkpoint_every_steps=2, keep_checkpoints=10)
  rundir = RunDir(tmp_path / "run")
  (rundir.checkpoint_dir / "4").rename(rundir.checkpoint_dir / "6")  # step 4's state, named 6
  resumed = _train(tmp_path / "run", num_steps=8, checkpoint_every_steps=2, keep_checkpoints=10)
  assert "checkpoint 6 is damaged (it holds the state of step 4, not 6)" in capsys.readouterr().out
  assert resumed.test_loss == clean.test_loss


def test_a_resume_that_changes_what_the_state_means_is_refused_naming_the_keys(tmp_path):
  _train(tmp_path, num_steps=2)
  for overrides, named in [
    ({"conv": "rotate4"}, "conv ('plain' -> 'rotate4')"),
    ({"batch_size": 8}, "batch_size (16 -> 8)"),
    ({"optim.name": "adamw"}, "optim.name ('sgd' -> 'adamw')"),
    ({"data.train_size": 32}, "data.train_size (64 -> 32)"),
  ]:
    with pytest.raises(
      trainer.ConfigError, match="holds checkpoints of another config: " + _re(named)
    ):
      trainer.train_and_evaluate(small_config(num_steps=4, **overrides), tmp_path)
  # what does not change the state's meaning resumes: a longer run, another learning rate, the data
  # moved
  summary = trainer.train_and_evaluate(
    small_config(num_steps=4, **{"optim.learning_rate": 0.01, "data.data_dir": "/elsewhere"}),
    tmp_path,
  )
  assert summary.steps == 4


def test_allow_config_change_resumes_if_the_arrays_fit_and_otherwise_says_which_do_not(tmp_path):
  _train(tmp_path, num_steps=2)
  summary = trainer.train_and_evaluate(
    small_config(num_steps=4, seed=3), tmp_path, allow_config_change=True
  )
  assert summary.steps == 4
  with pytest.raises(
    CheckpointError,
    match=r"checkpoint 4 holds a state of another structure than this "
    r"config's: .*params/convs/0/(angles|weights)/value is not saved",
  ):
    trainer.train_and_evaluate(
      small_config(num_steps=6, conv="rotate4"), tmp_path, allow_config_change=True
    )


def _re(text: str) -> str:
  import re

  return re.escape(text)


# ------------------------------------------------------------------ the workdir lock

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on testhost".encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_workdir_is_refused_while_the_first_lives(tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(tmp_path / "LOCK")], stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
      RunDirError, match=rf"{tmp_path} is in use by pid {holder.pid} on testhost"
    ) as e:
      _train(tmp_path, num_steps=2)
    assert not (tmp_path / "checkpoints").exists()
    # the line a user sees is ours, not the BlockingIOError flock raised (`from None`)
    assert one_line(e.value).startswith(f"{tmp_path} is in use by pid {holder.pid} on testhost")
  finally:
    holder.kill()
    holder.wait()
  # its process is gone: the lock is taken over, with a message
  said = []
  with RunDir(tmp_path).locked(said.append):
    assert (tmp_path / "LOCK").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
  assert said == [
    f"taking over {tmp_path / 'LOCK'}, left by pid {holder.pid} on testhost, which is no longer "
    "running"
  ]
  assert (tmp_path / "LOCK").read_text() == ""  # released


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(RunDirError, match=r"workdir .*file exists and is not a directory"):
    _train(tmp_path / "file", num_steps=2)


# ------------------------------------------------------------------ divergence


def test_a_finite_but_huge_loss_stops_the_run_like_a_nan(tmp_path):
  # lr = 3: without the bound the epoch losses are 1.5e7, 3.8, 2.8, 3.1e14, ... every number finite,
  # and the run ended at chance accuracy with exit 0 and only garbage checkpoints
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"diverged at step 1 .* or its loss exceeded 2303 "
    r"\(max_loss_factor 1000 x ln\(classes\)\); stopped. No checkpoint",
  ):
    _train(
      tmp_path / "fresh", num_steps=40, checkpoint_every_steps=2, **{"optim.learning_rate": 3.0}
    )
  assert not RunDir(tmp_path / "fresh").checkpoints.steps()
  # from a good checkpoint (the learning rate is not part of the state's meaning)
  _train(tmp_path / "run", num_steps=4, checkpoint_every_steps=2)
  with pytest.raises(
    trainer.TrainingDiverged, match=r"The last good checkpoint is step \d+"
  ) as info:
    _train(tmp_path / "run", num_steps=40, checkpoint_every_steps=2, **{"optim.learning_rate": 3.0})
  bad = int(str(info.value).split("at step ")[1].split()[0])
  step, state = trained_run.load_state(tmp_path / "run")
  assert 4 <= step <= bad and f"last good checkpoint is step {step} " in str(info.value)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_max_loss_factor_zero_turns_the_bound_off(tmp_path):
  with pytest.raises(trainer.TrainingDiverged, match="diverged at step 0"):
    _train(tmp_path / "tiny", num_steps=2, max_loss_factor=1e-4)
  assert _train(tmp_path / "off", num_steps=2, max_loss_factor=0.0).steps == 2


# ------------------------------------------------------------------ stops: SIGTERM at the worst
# moments


def _clean_metrics(workdir):
  return [
    {k: v for k, v in m.items() if k != "images_per_s"} for m in RunDir(workdir).read_metrics()
  ]


def _assert_same_run(a, b):
  assert _clean_metrics(a) == _clean_metrics(b)
  (step_a, state_a), (step_b, state_b) = trained_run.load_state(a), trained_run.load_state(b)
  assert step_a == step_b
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(x, y)


_RUN = dict(num_steps=24, checkpoint_every_steps=5, keep_checkpoints=2)  # 4 steps/epoch, 6 epochs


@pytest.fixture
def sigterm_is_caught():
  """SIGTERM outside the loop (its handler is installed only while it runs) must not kill pytest."""
  missed = []
  previous = signal.signal(signal.SIGTERM, lambda *_: missed.append(1))
  yield missed
  signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("where", ["epoch_line", "checkpoint", "mid_epoch"])
def test_sigterm_while_an_epoch_is_logged_or_saved_loses_nothing(
  tmp_path, monkeypatch, sigterm_is_caught, where
):
  """The failure of the review: a SIGTERM after a step and before its epoch line was appended."""
  _train(tmp_path / "clean", **_RUN)
  fired = []

  def kill():
    if not fired:
      fired.append(1)
      os.kill(os.getpid(), signal.SIGTERM)

  if where == "epoch_line":
    epoch = logger.MetricsLogger.epoch
    monkeypatch.setattr(
      logger.MetricsLogger,
      "epoch",
      lambda self, r: (kill() if r["epoch"] == 2 else None, epoch(self, r))[1],
    )
  elif where == "checkpoint":
    save = Checkpoints.save
    monkeypatch.setattr(
      Checkpoints,
      "save",
      lambda self, step, *a, **k: (kill() if step == 10 else None, save(self, step, *a, **k))[1],
    )
  else:
    step = logger.MetricsLogger.step
    calls = []
    monkeypatch.setattr(
      logger.MetricsLogger,
      "step",
      lambda self, *a: (calls.append(1), kill() if len(calls) == 7 else None, step(self, *a))[2],
    )
  with pytest.raises(trainer.TrainingStopped) as info:
    _train(tmp_path / "stopped", **_RUN)
  assert info.value.signum == signal.SIGTERM
  monkeypatch.undo()
  _train(tmp_path / "stopped", **_RUN)
  _assert_same_run(tmp_path / "stopped", tmp_path / "clean")


@pytest.mark.slow
def test_sigterm_at_ten_random_moments_then_resume_equals_the_uninterrupted_run(
  tmp_path, monkeypatch, sigterm_is_caught
):
  t0 = time.perf_counter()
  _train(tmp_path / "clean", **_RUN)
  duration = time.perf_counter() - t0
  rng = random.Random(14)
  run_loop = trainer.loop.Loop.run
  stopped_at = []
  for trial in range(10):
    delay = rng.uniform(0.0, 0.6 * duration)

    def run(self, state, delay=delay):
      timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
      timer.start()
      try:
        return run_loop(self, state)
      finally:
        timer.cancel()

    workdir = tmp_path / f"trial{trial}"
    monkeypatch.setattr(trainer.loop.Loop, "run", run)
    try:
      _train(workdir, **_RUN)
      stopped_at.append(None)
    except trainer.TrainingStopped as e:
      stopped_at.append(str(e).split("step ")[1].split(";")[0])
    monkeypatch.setattr(trainer.loop.Loop, "run", run_loop)
    _train(workdir, **_RUN)
    _assert_same_run(workdir, tmp_path / "clean")
  print("SIGTERM trials stopped at steps:", stopped_at)
  assert sum(s is not None for s in stopped_at) >= 5, stopped_at


# ------------------------------------------------------------------ the command line: one line each


def _cli(*args, cwd=REPO):
  return subprocess.run(
    [sys.executable, "-m", "train.main", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_one_error_line_names_an_os_error_anywhere_in_the_chain():
  try:
    try:
      raise OSError(28, "No space left on device", "/runs/x/checkpoints/8/state")
    except OSError as e:
      raise ValueError("tensorstore: write failed") from e
  except ValueError as e:
    assert one_line(e) == "No space left on device: /runs/x/checkpoints/8/state"


def test_command_line_failures_are_one_error_line(tmp_path):
  default = str(REPO / "configs/default.py")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  (tmp_path / "a_file").write_text("")
  (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
  (tmp_path / "npz").mkdir()
  for split, n in (("train", 0), ("test", 4)):
    np.savez(
      tmp_path / "npz" / f"{split}.npz", image=np.zeros((n, 28, 28), np.uint8), label=[0] * n
    )
  cases = [
    (
      ["--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "w")],
      2,
      "No such file",
    ),
    (
      ["--config", str(tmp_path / "broken.py"), "--workdir", str(tmp_path / "w")],
      2,
      "the config file cannot be loaded: SyntaxError",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.lr=0.1"],
      2,
      "unknown config key 'optim.lr'",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.num_steps=abc"],
      2,
      "flag --config.num_steps=abc",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.momentum=5.0"],
      2,
      "optim: momentum must be in [0, 1)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "a_file")],
      4,
      "exists and is not a directory",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=idx",
        "--config.data.name=fashion_mnist",
        "--config.data.data_dir=/nonexistent",
      ],
      2,
      "does not exist",
    ),
    # one synapse learns no position: it trained every step and then hung on its first save
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.conv=active",
        "--config.conv_options.synapses=1",
      ],
      2,
      "ActiveConv synapses must be an int >= 2, got 1",
    ),
    (["--config", default, "--workdir="], 4, "the workdir is empty: pass --workdir=DIR"),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.learning_rat=0.1"],
      2,
      "unknown config key 'optim.learning_rat' ('learning_rat' is not a key; did you mean "
      "'learning_rate' instead of 'learning_rat'?)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.boundaries=(0,)"],
      2,
      "optim.boundaries (epochs): schedule boundaries must be positive and increasing, got (0,)",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.optim.schedule=staircase",
        "--config.optim.boundaries=(0.01,)",
      ],
      2,
      "optim.boundaries (0.01,) (epochs) are steps [0] at 8 steps per epoch",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.distributed=True"],
      2,
      "cannot find the run's others: set JAX_COORDINATOR_ADDRESS",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=npz",
        f"--config.data.data_dir={tmp_path / 'npz'}",
      ],
      2,
      "train.npz holds no examples (an empty split)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "dangling")],
      4,
      "is a symbolic link to",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=arrayrecord",
        "--config.data.name=imagenet2012",
        "--config.data.data_dir=/nonexistent",
      ],
      2,
      "/nonexistent holds no prepared dataset (no metadata.json)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.angle_eps=nan"],
      2,
      "optim.angle_eps must be a number in (-inf, inf), got nan",
    ),
  ]
  for args, status, message in cases:
    run = _cli(*args)
    lines = run.stderr.strip().splitlines()
    assert (
      run.returncode == status
      and len(lines) == 1
      and lines[0].startswith("error: ")
      and message in lines[0]
    ), (args, run.returncode, run.stderr[-3000:])
  debug = _cli(
    "--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.momentum=5.0", "--debug"
  )
  assert "Traceback" in debug.stderr


def test_the_readmes_conv_option_parses_and_trains(tmp_path):
  run = _cli(
    "--config",
    str(REPO / "configs/default.py"),
    "--workdir",
    str(tmp_path),
    "--config.conv=active",
    "--config.conv_options.radius=3",
    "--config.num_steps=1",
    "--config.data.train_size=64",
    "--config.progress=False",
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert json.loads((tmp_path / "config.json").read_text())["conv_options"]["radius"] == 3
  # sn's four ACUs
  assert json.loads((tmp_path / "summary.json").read_text())["acu_radii"] == [3] * 4
  again = _cli(
    "--config",
    str(REPO / "configs/default.py"),
    "--workdir",
    str(tmp_path),
    "--config.conv=active",
    "--config.num_steps=2",
    "--config.data.train_size=64",
    "--config.progress=False",
  )
  assert again.returncode == 2
  assert again.stderr.strip() == (
    f"error: {tmp_path} holds checkpoints of another config: conv_options.radius "
    "(3 -> None). Use another --workdir, or pass --allow_config_change to resume them anyway"
  )


def _start_training(workdir, *overrides) -> subprocess.Popen:
  """`python -m train.main` of the default config for 100,000 steps, in the background."""
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "train.main",
      "--config",
      str(REPO / "configs/default.py"),
      "--workdir",
      str(workdir),
      "--config.num_steps=100000",
      "--config.progress=False",
      *overrides,
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_sigterm_to_the_command_exits_143_with_a_checkpoint(tmp_path):
  proc = _start_training(
    tmp_path, "--config.data.train_size=64", "--config.batch_size=16", "--config.log_every_steps=1"
  )
  line = proc.stdout.readline()  # the title line: the loop is about to start
  assert "parameters" in line, line + proc.stderr.read()
  deadline = time.time() + 120
  while not RunDir(tmp_path).read_metrics() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  step = RunDir(tmp_path).checkpoints.latest_step()
  assert step and f"training stopped at step {step}" in err
  assert not (tmp_path / "LOCK").read_text()


def test_a_resume_keeps_the_schedule_it_trained_with_and_applies_what_it_allows(tmp_path, capsys):
  # a longer cosine would restart its decay from the top: refused
  _train(tmp_path / "cos", num_steps=4, **{"optim.schedule": "cosine"})
  with pytest.raises(trainer.ConfigError, match=r"the schedule of the 4 steps .* changes"):
    _train(tmp_path / "cos", num_steps=8, **{"optim.schedule": "cosine"})
  # a longer constant schedule continues the run
  _train(tmp_path / "const", num_steps=2)
  assert _train(tmp_path / "const", num_steps=4).steps == 4
  # an allowed change of the ACU radius is applied, not only said
  _train(tmp_path / "acu", num_steps=2, conv="active")
  capsys.readouterr()
  config = small_config(num_steps=4, conv="active", **{"conv_options.radius": 3})
  summary = trainer.train_and_evaluate(config, tmp_path / "acu", allow_config_change=True)
  assert "conv_options.radius (None -> 3)" in capsys.readouterr().out
  assert summary.acu_radii == [3] * 4


def test_every_command_fails_with_one_error_line_and_no_usage_dump(tmp_path):
  default = str(REPO / "configs/default.py")
  cases = [
    (["train.analyze", f"--workdir={tmp_path / 'none'}"], 2, "config.json not found"),
    (["train.export", f"--workdir={tmp_path / 'none'}"], 2, "config.json not found"),
    (["train.reproduce", "--rows=sn_v99", "--report="], 2, "unknown rows ['sn_v99']"),
    (["train.reproduce", "--epochs=ten", "--report="], 2, "expected a positive number of epochs"),
    (
      ["train.main", "extra", "--config", default, f"--workdir={tmp_path / 'w'}"],
      2,
      "unexpected arguments: ['extra']",
    ),
  ]
  for (command, *args), status, message in cases:
    run = subprocess.run(
      [sys.executable, "-m", command, *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    lines = run.stderr.strip().splitlines()
    assert (
      run.returncode == status
      and len(lines) == 1
      and lines[0].startswith("error: ")
      and message in lines[0]
    ), (command, args, run.returncode, run.stderr[-3000:])


def test_readers_fall_back_past_a_damaged_latest_checkpoint_as_the_trainer_does(tmp_path, capsys):
  from train.trainer import trained_run

  _train(tmp_path, num_steps=6, checkpoint_every_steps=2, keep_checkpoints=10)
  _damage(RunDir(tmp_path).checkpoint_dir / "6", "bit_flip")
  run = trained_run.load_run(tmp_path)
  assert run.step == 4 and "checkpoint 6 is damaged" in capsys.readouterr().err
  assert RunDir(tmp_path).checkpoints.steps() == [2, 4, 6]  # a reader moves nothing
  with pytest.raises(CheckpointError, match="checkpoint 6 in .* is damaged"):
    trained_run.load_run(tmp_path, step=6)  # the step asked for, or an error


def test_readers_of_a_run_training_right_now_get_an_intact_checkpoint(tmp_path):
  from train import export
  from train.trainer import trained_run

  workdir = tmp_path / "live"
  proc = _start_training(
    workdir,
    "--config.checkpoint_every_steps=3",
    "--config.keep_checkpoints=2",
    "--config.eval_every_epochs=100000",
  )
  try:
    deadline = time.monotonic() + 120
    while not RunDir(workdir).checkpoints.steps():
      assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
      time.sleep(0.2)
      RunDir(workdir).checkpoints.close()
    seen = []
    for _ in range(4):  # the checkpoints rotate every few milliseconds meanwhile
      run = trained_run.load_run(workdir)
      seen.append(run.step)
      assert run.step % 3 == 0 and run.model is not None
    results = export.export_run(workdir, ("jax",), out=tmp_path / "ship", check_images=64)
    assert results["jax"]["agreement"] == 1.0
    assert proc.poll() is None, "the run was disturbed"
    assert len(set(seen)) > 1, seen  # the readers did read a moving run
  finally:
    proc.terminate()
    proc.wait(timeout=120)
  assert proc.returncode == 143, proc.stderr.read()[-2000:]


def test_a_resume_on_other_data_under_the_same_config_is_refused(tmp_path, capsys):
  data = tmp_path / "npz"
  data.mkdir()

  def write(n, seed):
    train, test = pipeline.synthetic_splits((28, 28, 1), 10, n, 40, seed)
    for name, split in (("train", train), ("test", test)):
      np.savez(data / f"{name}.npz", image=split.images, label=split.labels)

  write(64, 0)
  npz = {"data.source": "npz", "data.data_dir": str(data)}
  _train(tmp_path / "run", num_steps=4, **npz)
  write(96, 1)  # regenerated in the same folder
  with pytest.raises(trainer.ConfigError, match=r"the data differs .* \(train\+test examples and"):
    _train(tmp_path / "run", num_steps=8, **npz)
  config = small_config(num_steps=8, **npz)
  trainer.train_and_evaluate(config, tmp_path / "run", allow_config_change=True)
  assert "resuming with other data (--allow_config_change)" in capsys.readouterr().out


_STARTUP_SIGINT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from configs import default
from train import trainer
from train.trainer import experiment

build = experiment.build
def interrupted(*args, **kwargs):  # Ctrl-C while the run is being set up
  built = build(*args, **kwargs)
  os.kill(os.getpid(), signal.SIGINT)
  return built
experiment.build = interrupted
config = default.get_config()
config.update(num_steps=4, progress=False)
try:
  trainer.train_and_evaluate(config, sys.argv[2])
except trainer.TrainingStopped as e:
  print("STOPPED", e.signum, e)
"""


def test_ctrl_c_during_start_up_stops_before_the_first_step(tmp_path):
  run = subprocess.run(
    [sys.executable, "-c", _STARTUP_SIGINT, str(REPO), str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert (
    f"STOPPED {int(signal.SIGINT)} training stopped before its first step; nothing was saved"
    in (run.stdout)
  ), run.stdout + run.stderr[-2000:]
  assert not (tmp_path / "summary.json").exists() and not RunDir(tmp_path).checkpoints.steps()
