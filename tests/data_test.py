"""train.data: loading, batches as functions of the step, on-device preprocessing."""

import gzip
import os
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from train import data as pipeline
from train.data import memory
from train.trainer.settings import DataSettings


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if compress:
    path = path.with_name(path.name + ".gz")
    data = gzip.compress(data)
  path.write_bytes(data)


def _idx_dir(tmp_path, rng, compress=True, n_train=30, n_test=12):
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    _write_idx(
      tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress
    )
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), compress)
  return tmp_path


def _data(**kw):
  """The default config's data block with 40/20 synthetic examples and `kw`."""
  return DataSettings(
    **{**default.get_config().data.to_dict(), "train_size": 40, "test_size": 20, **kw}
  )


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, rng, compress):
  images = rng.integers(0, 256, (5, 4, 3))
  _write_idx(tmp_path / "x-idx3-ubyte", images, compress)
  name = "x-idx3-ubyte.gz" if compress else "x-idx3-ubyte"
  np.testing.assert_array_equal(memory.read_idx(tmp_path / name), images)


def test_read_idx_rejects_other_files(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(pipeline.DataError, match="not an IDX file"):
    memory.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
  with pytest.raises(pipeline.DataError, match="header says"):
    memory.read_idx(tmp_path / "short")


def test_load_idx_directory(tmp_path, rng):
  d = _idx_dir(tmp_path, rng)
  ds = pipeline.load(_data(name="fashion_mnist", source="idx", data_dir=str(d)))
  chex.assert_shape(ds.train.images, (30, 28, 28, 1))
  chex.assert_shape(ds.test.labels, (12,))
  assert ds.num_classes == 10 and ds.train.images.dtype == np.uint8
  x = ds.train.images.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-10)
  np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-8)


def test_load_npz_directory(tmp_path, rng):
  for name, n in (("train", 20), ("test", 8)):
    np.savez(
      tmp_path / f"{name}.npz",
      image=rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
      label=rng.integers(0, 100, (n,)),
    )
  ds = pipeline.load(_data(name="cifar100", source="npz", data_dir=str(tmp_path)))
  chex.assert_shape(ds.train.images, (20, 32, 32, 3))
  assert ds.num_classes == 100 and len(ds.mean) == 3


def test_load_tfds_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = pipeline.load(_data(name="cifar10", source="tfds"))
  chex.assert_shape(ds.train.images, (24, 32, 32, 3))
  chex.assert_shape(ds.test.images, (24, 32, 32, 3))
  assert ds.train.labels.max() < 10


@pytest.mark.skipif(
  not os.path.isdir(memory.DEBIAN_FASHION_MNIST), reason="dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist_is_the_default_idx_directory():
  ds = pipeline.load(_data(name="fashion_mnist", source="idx"))
  assert len(ds.train) == 60000 and len(ds.test) == 10000
  assert sorted(np.bincount(ds.test.labels)) == [1000] * 10


@pytest.mark.parametrize(
  "kw, match",
  [
    (
      dict(name="fashion_mnist", source="idx", data_dir="/nonexistent"),
      "apt-get install -y dataset-fashion-mnist",
    ),
    (dict(name="cifar10", source="npz", data_dir="/nonexistent"), "does not exist"),
    (dict(name="imagenet"), "unknown dataset 'imagenet'"),
    (dict(source="web"), "unknown data source 'web'"),
  ],
)
def test_missing_or_unknown_data_says_what_to_do(kw, match):
  with pytest.raises(pipeline.DataError, match=match):
    pipeline.load(_data(**kw))


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(
    pipeline.DataError, match="tfds build svhn_cropped --file_format=array_record"
  ):
    pipeline.load(_data(name="svhn_cropped", source="tfds", data_dir=str(tmp_path)))


def test_wrong_image_shape_is_reported(tmp_path, rng):
  d = _idx_dir(tmp_path, rng)
  with pytest.raises(pipeline.DataError, match=r"cifar10 images should be \(32, 32, 3\)"):
    pipeline.load(_data(name="cifar10", source="idx", data_dir=str(d)))


def test_batches_are_a_function_of_the_step():
  train, _ = pipeline.synthetic_splits((4, 4, 1), 3, 50, 5)
  b = pipeline.Batches(train, 8, seed=7)
  assert b.steps_per_epoch == 6
  again = pipeline.Batches(train, 8, seed=7)
  for step in (0, 5, 6, 13):
    np.testing.assert_array_equal(b.batch(step)["image"], again.batch(step)["image"])
  # an epoch visits distinct examples; a new epoch reshuffles
  seen = np.concatenate([b.plan.permutation(0)[i * 8 : (i + 1) * 8] for i in range(6)])
  assert len(set(seen.tolist())) == 48
  assert not np.array_equal(b.plan.permutation(0), b.plan.permutation(1))
  other = pipeline.Batches(train, 8, seed=8).plan
  assert not np.array_equal(other.permutation(0), b.plan.permutation(0))
  streamed = list(b.iterate(4, 9))
  assert len(streamed) == 5
  for step, batch in zip(range(4, 9), streamed):
    np.testing.assert_array_equal(batch["label"], b.batch(step)["label"])


def test_process_slices_make_up_the_global_batch():
  train, _ = pipeline.synthetic_splits((4, 4, 1), 3, 40, 5)
  whole = pipeline.Batches(train, 8, seed=1).batch(3)
  parts = [
    pipeline.Batches(train, 8, seed=1, process_index=i, process_count=2).batch(3) for i in range(2)
  ]
  np.testing.assert_array_equal(
    np.sort(np.concatenate([p["label"] for p in parts])), np.sort(whole["label"])
  )
  with pytest.raises(pipeline.DataError, match="must divide among 3 processes"):
    pipeline.Batches(train, 8, seed=1, process_count=3)
  with pytest.raises(pipeline.DataError, match="larger than the 40 training examples"):
    pipeline.Batches(train, 64, seed=1)


def test_eval_batches_cover_the_split_once_with_a_mask():
  _, test = pipeline.synthetic_splits((4, 4, 1), 3, 5, 23)
  batches = list(test.eval_batches(10))
  assert [b["image"].shape[0] for b in batches] == [10, 10, 10]
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 23 and not mask[23:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], test.labels)


def test_preprocess_normalises_and_augments_like_pad_crop_flip(rng):
  images = jnp.asarray(rng.integers(0, 256, (6, 32, 32, 3)), jnp.uint8)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  plain = pipeline.preprocess(images, None, mean=mean, std=std)
  np.testing.assert_allclose(
    plain, (np.asarray(images) / 255 - mean) / np.asarray(std), rtol=1e-5, atol=1e-6
  )
  key = jax.random.key(3)
  aug = np.asarray(pipeline.preprocess(images, key, mean=mean, std=std, augment="cifar"))
  jitted = jax.jit(lambda x, k: pipeline.preprocess(x, k, mean=mean, std=std, augment="cifar"))(
    images, key
  )
  np.testing.assert_allclose(jitted, aug, atol=1e-6)  # same crops and flips under jit
  padded = np.pad(np.asarray(plain), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for n in range(6):
    candidates = [
      c[:, ::-1] if flip else c
      for i in range(9)
      for j in range(9)
      for flip in (False, True)
      for c in [padded[n, i : i + 32, j : j + 32]]
    ]
    assert any(np.array_equal(aug[n], c) for c in candidates), f"example {n} is not a flipped crop"
  assert not np.array_equal(aug, np.asarray(plain))
  with pytest.raises(ValueError, match="augment must be"):
    pipeline.preprocess(images, key, mean=mean, std=std, augment="mixup")
