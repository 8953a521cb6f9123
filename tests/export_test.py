"""kshapes_jax.export and train.export: a deployed net of every conv kind, written as a jax.export
artifact and as ONNX, reloaded (jax.export.deserialize, onnxruntime) and run on real Fashion-MNIST
test images."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import runs
from flax import nnx

import kshapes_jax as K

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
# the first 96 test images, uint8
_DATA = np.load(REPO / "tests" / "data" / "fashion_mnist_test96.npz")
IMAGES = _DATA["images"]
NORMALIZE = ((0.286,), (0.353,))  # Fashion-MNIST's train-set channel mean and std


def _to_cifar(x: np.ndarray) -> np.ndarray:
  """28x28x1 images as 32x32x3 ones (zero border, grey replicated), for the CIFAR-shaped nets."""
  return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)


def _reference(shipped: nnx.Module, images: np.ndarray, normalize=None) -> np.ndarray:
  with jax.default_matmul_precision("highest"):  # exact float32 on a GPU too
    return np.asarray(K.export.forward(shipped, normalize)(images))


def _session(path: Path):
  s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return lambda x: s.run(None, {"images": x})[0]


def _check(logits: np.ndarray, reference: np.ndarray) -> None:
  scale = np.max(np.abs(reference))
  np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-5 * scale)
  np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))


# deployed, RotateConv, DBB and RepVGG are 3x3 convs with a bias as ACB is: with -m slow
@pytest.mark.parametrize("conv", runs.kinds(slow=("rotate2", "rotate4", "dbb", "repvgg")))
def test_every_conv_kind_round_trips_through_jax_export_and_onnx(tmp_path, conv):
  model = K.models.create("sn", conv=conv, rngs=nnx.Rngs(0))
  model.train()
  # BN statistics of real images
  model(jnp.asarray((IMAGES.astype(np.float32) / 255 - 0.286) / 0.353))
  shipped = K.deploy(model)
  reference = _reference(shipped, IMAGES, NORMALIZE)

  artifact = K.export.save_jax(shipped, (28, 28, 1), tmp_path / "sn.jaxexport", normalize=NORMALIZE)
  predict = K.export.load_jax(artifact)
  _check(np.asarray(predict(IMAGES)), reference)
  _check(np.asarray(predict(IMAGES[:5])), reference[:5])  # any batch size

  path = K.export.save_onnx(shipped, (28, 28, 1), tmp_path / "sn.onnx", normalize=NORMALIZE)
  model_proto = onnx.load(str(path))
  assert model_proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
  run = _session(path)
  _check(run(IMAGES), reference)
  _check(run(IMAGES[:1]), reference[:1])


@pytest.mark.parametrize(
  "name,conv",
  [
    ("resnet20", "acb"),
    ("cifar_quick", "versatile"),
    ("acu_plain", "active"),
    ("lenet", "versatile"),
  ],
)
def test_zoo_nets_round_trip_through_onnx(tmp_path, name, conv):
  # option-A shortcuts (strided slice, channel pad), average and max pools, the ACU net, float
  # inputs
  model = K.models.create(name, conv=conv, rngs=nnx.Rngs(1))
  x = (IMAGES.astype(np.float32) / 255 - 0.286) / 0.353
  x = x if K.models.spec(name).input_shape[-1] == 1 else _to_cifar(x)
  model.train()
  model(jnp.asarray(x))
  shipped = K.deploy(model)
  reference = _reference(shipped, x)
  run = _session(K.export.save_onnx(shipped, x.shape[1:], tmp_path / "m.onnx"))
  _check(run(x), reference)
  _check(
    np.asarray(K.export.load_jax(K.export.save_jax(shipped, x.shape[1:], tmp_path / "m.jax"))(x)),
    reference,
  )


def test_refusals():
  model = K.deploy(K.models.create("sn", rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\)"):
    K.export.to_onnx(model, (28, 28))

  class Sorts(nnx.Module):
    def __call__(self, x):
      return jnp.sort(x.reshape(x.shape[0], -1), axis=-1)

  with pytest.raises(ValueError, match="the primitive 'sort' is not supported"):
    K.export.to_onnx(Sorts(), (4, 4, 1))


def test_cli_exports_a_trained_run_and_checks_the_files(tmp_path, monkeypatch):
  from configs import default
  from train import trainer

  c = default.get_config()
  c.data.update(train_size=64, test_size=48)
  c.update(
    batch_size=16, eval_batch_size=16, num_steps=4, log_every_steps=1, progress=False, conv="acb"
  )
  trainer.train_and_evaluate(c, tmp_path / "run")
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.export",
      f"--workdir={tmp_path / 'run'}",
      "--format=both",
      "--int8",
      "--calibration=32",
      # 48 test images: one changed prediction is 2.08 points. This checks the files and the
      # certificate's rows of a 4-step net; the refusal above the drop has its own test.
      "--int8_max_drop=5",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  for suffix in ("jaxexport", "onnx", "int8.onnx"):
    assert (tmp_path / "run" / "export" / f"model.{suffix}").stat().st_size > 10_000
  assert (
    done.stdout.count("predictions agree with the deployed model on 100.00% of the test images")
    == 2
  )
  # the INT8 file: measured on the 48 test images against the float32 one, its report in the
  # certificate it carries (which is the float32 file's with the INT8 rows added)
  assert "calibrated on 32 training images" in done.stdout, done.stdout
  assert "in JAX (Qwix, the same calibration): top-1" in done.stdout, done.stderr[-2000:]
  shipped = K.export.read_certificate(tmp_path / "run" / "export" / "model.int8.onnx")
  fp32 = K.export.read_certificate(tmp_path / "run" / "export" / "model.onnx")
  assert shipped is not None and fp32 is not None and fp32.int8 is None
  assert shipped.int8 is not None and shipped.layers == fp32.layers
  assert shipped.int8.images == 48 and shipped.int8.calibration == 32
  assert shipped.int8.top1_jax is not None and 0 <= shipped.int8.agreement_jax <= 1
  assert shipped.int8.scheme_jax == K.int8.JAX_SCHEME
  assert [e.path for e in shipped.int8.layers] == ["convs/0", "convs/1", "convs/2", "convs/3", "fc"]
  int8_session = _session(tmp_path / "run" / "export" / "model.int8.onnx")
  assert int8_session(IMAGES[:4]).shape == (4, 10)
  # a file that loses more than the tolerance: the float32 file is written, the INT8 one is not
  from train import export as train_export

  measured = K.int8.measure

  def losing(*args, **kwargs):  # the measured report, with 3 of its 48 predictions turned wrong
    r = measured(*args, **kwargs)
    return dataclasses.replace(r, top1_int8=r.top1_fp32 - 3 / 48)

  monkeypatch.setattr(K.int8, "measure", losing)
  with pytest.raises(ValueError, match=r"INT8 loses too much: 6\.25 points.*above the tolerance 1"):
    train_export.export_run(tmp_path / "run", out=tmp_path / "refused", int8=True, calibration=8)
  assert sorted(p.name for p in (tmp_path / "refused").iterdir()) == ["model.onnx"]
  with pytest.raises(ValueError, match="--format onnx or both"):
    train_export.export_run(tmp_path / "run", ("jax",), out=tmp_path / "jax_only", int8=True)
  bad = subprocess.run(
    [sys.executable, "-m", "train.export", f"--workdir={tmp_path / 'none'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert bad.returncode != 0 and "config.json" in (bad.stderr + bad.stdout)


_DAMAGES = {
  "truncated": lambda raw: raw[: len(raw) // 2],
  "garbage": lambda raw: bytes(np.random.default_rng(0).integers(0, 256, 400, np.uint8)),
  "empty": lambda raw: b"",
  "foreign": lambda raw: b'{"format": "something else", "layers": 3}',
  "bit_flip": lambda raw: raw[:16] + bytes([raw[16] ^ 0xFF]) + raw[17:],
}


@pytest.fixture(scope="module")
def shipped_files(tmp_path_factory):
  """One deployed net's files: a jax.export artifact with its certificate beside it, and ONNX."""
  root = tmp_path_factory.mktemp("shipped")
  model = K.models.create("sn", conv="acb", rngs=nnx.Rngs(0))
  model.eval()
  shipped = K.deploy(model)
  x = jnp.asarray(IMAGES[:8].astype(np.float32) / 255)
  certificate = K.certify(model, shipped, x)
  jax_file = K.export.save_jax(shipped, (28, 28, 1), root / "sn.jaxexport", certificate=certificate)
  onnx_file = K.export.save_onnx(shipped, (28, 28, 1), root / "sn.onnx", certificate=certificate)
  return jax_file, onnx_file


@pytest.mark.parametrize("how", list(_DAMAGES))
@pytest.mark.parametrize("which", ["jaxexport", "certificate", "onnx"])
def test_a_damaged_shipped_file_is_one_error_naming_it(tmp_path, shipped_files, which, how):
  """A truncated or foreign file we wrote gave struct's 'unpack_from requires a buffer of at
  least 3414211550 bytes' or a protobuf error, naming no file (issue 39, the harness' part b)."""
  jax_file, onnx_file = shipped_files
  source = {
    "jaxexport": jax_file,
    "certificate": jax_file.with_name(jax_file.name + K.export.CERTIFICATE_SUFFIX),
    "onnx": onnx_file,
  }[which]
  target = tmp_path / source.name
  target.write_bytes(_DAMAGES[how](source.read_bytes()))
  if which == "certificate":
    (tmp_path / jax_file.name).write_bytes(jax_file.read_bytes())
  read = {
    "jaxexport": lambda: K.export.load_jax(target)(IMAGES[:2].astype(np.float32)),
    "certificate": lambda: K.export.read_certificate(tmp_path / jax_file.name),
    "onnx": lambda: K.export.read_certificate(target),
  }[which]
  try:
    read()
  except ValueError as e:
    assert str(target) in str(e) and "\n" not in str(e), str(e)
  else:  # a damage the format does not notice (a flipped bit in a value): never silent garbage
    assert how == "bit_flip", f"{which} {how} was read without an error"
