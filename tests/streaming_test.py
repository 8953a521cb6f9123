"""The streamed pipeline: train.prepare on a real JPEG ImageFolder tree, the Inception and
evaluation crops, batches by (seed, step) whatever the threads, workers and hosts, ResNet-18
trained through it, kill -9 resume, TFDS imagenet2012 (mock), and the bad inputs."""

import io
import json
import os
import shutil
import signal
from pathlib import Path

import driver
import jax
import numpy as np
import pytest
from PIL import Image

from configs import default
from configs import imagenet as imagenet_config
from tests import jpeg_tree
from tests.jpeg_tree import CLASSES, make_tree
from train import data, prepare, trainer
from train.data import images, records, streamed
from train.trainer import settings, trained_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = jpeg_tree.needs_fashion_mnist


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  base = tmp_path_factory.mktemp("stream")
  tree = make_tree(base / "tree")
  out = base / "prepared"
  meta = prepare.prepare(tree, out, name="fm3", examples_per_shard=20, workers=2, say=lambda m: 0)
  return tree, out, meta


def stream_config(data_dir, **overrides):
  c = imagenet_config.get_config()
  c.data.update(data_dir=str(data_dir), name="fm3", image_size=32, threads=2)
  c.update(model="cifar_quick", dtype="float32", batch_size=8, eval_batch_size=8, num_steps=6)
  c.update(log_every_steps=1, progress=False, checkpoint_every_steps=2)
  c.optim.update(learning_rate=0.01, boundaries=())
  c.model_kwargs = {"image_size": 32}
  c.update_from_flattened_dict(overrides)
  return c


def test_prepare_writes_every_image_with_its_folders_label(prepared):
  tree, out, meta = prepared
  assert meta.classes == tuple(sorted(CLASSES))
  train, test = meta.splits["train"], meta.splits["test"]
  assert (train.examples, test.examples) == (3 * 24 + 3, 3 * 6)
  assert len(train.shards) == 4 and train.converted == 3 and not train.skipped
  assert records.read_metadata(out) == meta
  source = streamed._arrayrecord_source(list(records.shard_paths(out, train)), "train")
  labels = [records.decode(source[i])[0] for i in range(len(source))]
  files = sorted(p for p in (tree / "train").rglob("*") if p.suffix in (".jpg", ".png"))
  expected = sorted(meta.classes.index(p.parent.name) for p in files)
  assert sorted(labels) == expected
  # an RGB JPEG is stored as its own bytes; the others are decodable RGB JPEGs
  label, jpeg = records.decode(source[0])
  assert jpeg in {p.read_bytes() for p in (tree / "train" / meta.classes[label]).glob("*.jpg")}
  shapes = {images.decode_jpeg(records.decode(source[i])[1]).shape[-1] for i in range(len(source))}
  assert shapes == {3}
  assert all(0.05 < m < 0.6 for m in meta.mean) and meta.mean[1] < meta.mean[0]


def test_prepare_max_side_resizes_the_larger_images(prepared, tmp_path):
  tree, _, _ = prepared
  meta = prepare.prepare(tree, tmp_path / "small", max_side=20, say=lambda m: 0)
  assert meta.splits["train"].resized == meta.splits["train"].examples
  source = streamed._arrayrecord_source(
    list(records.shard_paths(tmp_path / "small", meta.splits["test"])), "test"
  )
  assert images.decode_jpeg(records.decode(source[0])[1]).shape == (15, 20, 3)


def test_prepare_refuses_bad_trees_with_the_culprit_named(prepared, tmp_path):
  tree, out, _ = prepared
  bad = tmp_path / "bad"
  shutil.copytree(tree, bad)
  corrupt = bad / "train" / "bag" / "zz_corrupt.jpg"
  data = next((tree / "train" / "bag").glob("*.jpg")).read_bytes()
  corrupt.write_bytes(data[: len(data) // 2])
  with pytest.raises(prepare.PrepareError, match="zz_corrupt.jpg cannot be read.*--skip_bad"):
    prepare.prepare(bad, tmp_path / "o1", say=lambda m: 0)
  lines = []
  meta = prepare.prepare(bad, tmp_path / "o2", skip_bad=True, say=lines.append)
  assert meta.splits["train"].skipped == ("train/bag/zz_corrupt.jpg",)
  assert "1 skipped (listed in metadata.json)" in lines[0]
  (bad / "train" / "empty").mkdir()
  with pytest.raises(prepare.PrepareError, match="class folder .*empty has no images"):
    prepare.prepare(bad, tmp_path / "o3", skip_bad=True, say=lambda m: 0)
  with pytest.raises(prepare.PrepareError, match="already holds a prepared dataset"):
    prepare.prepare(tree, out, say=lambda m: 0)
  (bad / "train" / "empty").rmdir()
  (bad / "val" / "sock").mkdir()
  with pytest.raises(prepare.PrepareError, match=r"class folder\(s\) the train split lacks"):
    prepare.prepare(bad, tmp_path / "o4", skip_bad=True, say=lambda m: 0)


def test_two_prepares_into_one_folder_cannot_interleave(prepared, tmp_path):
  """A second prepare into a --out that one is writing stops at once naming the holder (two had
  both exited 0, with 274 of 450 records failing their hash and the other dataset's metadata)."""
  from train import lock

  tree, _, _ = prepared
  out = tmp_path / "out"
  out.mkdir()
  with lock.held(out / "LOCK", RuntimeError, "test", say=lambda m: 0):
    with pytest.raises(prepare.PrepareError, match=rf"{out} is in use by pid {os.getpid()} on "):
      prepare.prepare(tree, out, say=lambda m: 0)
  assert not list(out.glob("*.array_record")) and not (out / "metadata.json").exists()
  # released: the next one prepares it
  assert prepare.prepare(tree, out, say=lambda m: 0).name == "tree"


def test_a_missing_or_foreign_shard_is_a_one_line_data_error(prepared, tmp_path):
  _, out, meta = prepared
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  (copy / meta.splits["train"].shards[2]).unlink()
  with pytest.raises(data.DataError, match="lacks 1 of the train split's shards"):
    data.load(settings.read(stream_config(copy)).data)
  (copy / meta.splits["train"].shards[2]).write_bytes(b"not a shard")
  with pytest.raises(data.DataError, match="cannot be opened"):
    data.load(settings.read(stream_config(copy)).data)
  with pytest.raises(data.DataError, match="set data.name='fm3'"):
    data.load(settings.read(stream_config(out, **{"data.name": "imagenet2012"})).data)
  with pytest.raises(data.DataError, match="no prepared dataset"):
    data.load(settings.read(stream_config(tmp_path)).data)


def _edited_metadata(out: Path, copy: Path, edit) -> Path:
  shutil.copytree(out, copy)
  raw = json.loads((copy / "metadata.json").read_text())
  edit(raw)
  (copy / "metadata.json").write_text(json.dumps(raw))
  return copy


METADATA_EDITS = {
  # what a hand edit or a stale copy makes of metadata.json -> the one line that says so
  "fewer classes than the labels": (
    lambda m: m.update(classes=m["classes"][:2]),
    "label 2; metadata.json lists 2 classes",
  ),
  "std of 0": (lambda m: m.update(std=[0.0, 0.3, 0.3]), "std above 0"),
  "NaN mean": (lambda m: m.update(mean=[float("nan")] * 3), "3 finite numbers"),
  "two channels": (lambda m: m.update(mean=[0.5, 0.5]), "3 finite numbers"),
  "no classes": (lambda m: m.update(classes=[]), "classes must be distinct"),
  "repeated class": (lambda m: m.update(classes=[m["classes"][0]] * 3), "classes must be distinct"),
  "count above the shards": (
    lambda m: m["splits"]["train"].update(examples=m["splits"]["train"]["examples"] + 1),
    r"counts \d+ train images but the train shards hold \d+ records",
  ),
  "count below the shards": (
    lambda m: m["splits"]["test"].update(examples=m["splits"]["test"]["examples"] - 1),
    r"counts \d+ test images but the test shards hold \d+ records",
  ),
  "empty test split": (
    lambda m: m["splits"]["test"].update(examples=0, shards=[]),
    "the test split has no images",
  ),
  "negative count": (
    lambda m: m["splits"]["test"].update(examples=-4),
    "examples must be a count",
  ),
}


@pytest.mark.parametrize("edit", list(METADATA_EDITS))
def test_prepared_data_is_checked_against_its_metadata(prepared, tmp_path, edit):
  """Each way metadata.json can disagree with its shards, or with itself, is one DataError line
  naming the file, before a step trains (they made runs 'diverge at step 0', or went unseen)."""
  _, out, _ = prepared
  change, message = METADATA_EDITS[edit]
  copy = _edited_metadata(out, tmp_path / "copy", change)
  with pytest.raises(data.DataError, match=message) as info:
    dataset = data.load(settings.read(stream_config(copy)).data)
    # labels are checked as each record is read: read them all
    for split in (dataset.train, dataset.test):
      for index in range(len(split)):
        split.example(index, None)
  assert "\n" not in str(info.value)


def _flipped(raw: bytes) -> bytes:
  start = len(raw) // 10  # inside the first chunk's data (the file is padded to whole blocks)
  return raw[:start] + bytes(b ^ 0xFF for b in raw[start : start + 64]) + raw[start + 64 :]


SHARD_DAMAGES = {
  "bytes flipped": _flipped,
  "truncated": lambda raw: raw[: len(raw) // 2],
  "empty": lambda raw: b"",
  "garbage": lambda raw: bytes(np.random.default_rng(1).integers(0, 256, len(raw), np.uint8)),
}


@pytest.mark.parametrize("how", list(SHARD_DAMAGES))
def test_a_damaged_shard_names_the_folder_and_split(prepared, tmp_path, how):
  """A corrupt shard stopped a streamed run with "Corrupted Riegeli/records file", naming no file
  (issue 39, case 7); truncated, empty and garbage ones likewise, each one line."""
  _, out, meta = prepared
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  shard = copy / meta.splits["test"].shards[0]
  shard.write_bytes(SHARD_DAMAGES[how](shard.read_bytes()))
  try:
    dataset = data.load(settings.read(stream_config(copy)).data)
    for index in range(len(dataset.test)):
      dataset.test.example(index, None)
  except data.DataError as e:
    # the folder and split, and the example when the damage is inside a record's chunk
    assert f"{copy} (test" in str(e) and (
      "cannot be read" in str(e) or "cannot be opened" in str(e)
    )
    assert "\n" not in str(e)
  else:
    pytest.fail("a corrupt shard was read without an error")


def test_crops_follow_the_recipe():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
  boxes = [images.inception_box(375, 500, rng) for _ in range(2000)]
  areas = np.array([h * w / (375 * 500) for _, _, h, w in boxes])
  ratios = np.array([w / h for _, _, h, w in boxes])
  assert 0.075 < areas.min() and areas.max() <= 1.0 and 0.74 < ratios.min() <= ratios.max() < 1.35
  assert all(0 <= t and t + h <= 375 and 0 <= left and left + w <= 500 for t, left, h, w in boxes)
  assert images.train_image(image, 224, rng).shape == (224, 224, 3)
  # evaluation: shorter side to 256, centre 224; a constant image stays constant
  flat = np.full((300, 400, 3), 77, np.uint8)
  np.testing.assert_array_equal(images.eval_image(flat, 224), np.full((224, 224, 3), 77, np.uint8))
  ramp = np.tile(np.arange(400, dtype=np.uint8)[None, :, None] // 2, (300, 1, 3))
  centre = images.eval_image(ramp, 224)
  # 400 -> 341 wide, cut 58 each side: the centre column's value is the source's centre
  assert abs(int(centre[0, 112, 0]) - 100) <= 1
  with pytest.raises(images.ImageError, match="not a decodable JPEG"):
    images.decode_jpeg(b"\xff\xd8garbage")


def test_batches_are_a_function_of_seed_and_step_whatever_the_threads_and_hosts(prepared):
  _, out, _ = prepared
  dataset = data.load(settings.read(stream_config(out)).data)
  split = dataset.train
  one = data.Batches(split, 8, seed=3)
  assert one.steps_per_epoch == 75 // 8
  serial = [one.batch(s) for s in range(10, 14)]
  threaded = list(
    data.Batches(streamed.StreamSplit(**{**split.__dict__, "threads": 4}), 8, seed=3).iterate(
      10, 14
    )
  )
  for a, b in zip(serial, threaded):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert serial[0]["image"].shape == (8, 32, 32, 3) and serial[0]["image"].dtype == np.uint8
  # two hosts: disjoint halves whose union is the one-host batch, the same pixels
  halves = [
    data.Batches(split, 8, seed=3, process_index=i, process_count=2).batch(12) for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), serial[2]["image"])
  # an epoch of steps reads every example at most once
  seen = np.concatenate([one.plan.indices(s) for s in range(one.steps_per_epoch)])
  assert len(set(seen.tolist())) == len(seen) == one.steps_per_epoch * 8
  assert not np.array_equal(data.Batches(split, 8, seed=4).batch(10)["image"], serial[0]["image"])


def test_evaluation_reads_every_example_once_on_any_number_of_hosts(prepared):
  _, out, _ = prepared
  test = data.load(settings.read(stream_config(out)).data).test
  assert len(test) == 18 and not test.training
  for hosts in (1, 2):
    labels = []
    for i in range(hosts):
      for b in test.eval_batches(8, process_index=i, process_count=hosts):
        assert b["image"].shape == (8 // hosts, 32, 32, 3)
        labels.append(b["label"][b["mask"]])
    assert sum(len(x) for x in labels) == 18
  whole = list(test.eval_batches(8))
  assert [int(b["mask"].sum()) for b in whole] == [8, 8, 2]


@pytest.mark.parametrize(
  "model, size, lr",
  [("cifar_quick", 32, 0.01), pytest.param("resnet18", 48, 0.005, marks=pytest.mark.slow)],
)
def test_a_model_learns_through_the_stream_and_deploys_equal(prepared, tmp_path, model, size, lr):
  """The labels travel with their images: 12 steps fit the training images (ResNet-18, an
  ImageNet-family net, with -m slow; every ImageNet table config trains through the stream in
  test_imagenet_table_configs_train_a_few_steps_and_deploy_equal)."""
  _, out, _ = prepared
  config = stream_config(
    out,
    model=model,
    num_steps=12,
    batch_size=16,
    eval_batch_size=6,
    checkpoint_every_steps=100,
    # the evaluation crop on the training images too: 12 steps fit them
    **{"data.image_size": size, "data.augment": "none", "optim.learning_rate": lr},
  )
  config.model_kwargs = {"image_size": size} if model == "cifar_quick" else {}
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary.dataset == "fm3" and summary.source == "arrayrecord"
  assert summary.test_examples == 18 and summary.test_top5_accuracy == 1.0  # 3 classes
  assert summary.deployed_prediction_agreement == 1.0
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  losses = [json.loads(x)["train_loss"] for x in lines]
  assert len(losses) == 3 and losses[-1] < 0.5 * losses[0], losses


def _run(tmp_path, workdir, overrides, kill_at=-1):
  """(exit status, output) of configs/imagenet.py with `overrides`, in its own process."""
  overrides = {**overrides, "model_kwargs": {"image_size": 32}}
  return driver.run(tmp_path, workdir, overrides, config="configs.imagenet", kill_at=kill_at)


@pytest.mark.slow  # kill -9 and resume in the default run: train_test.py (in memory)
def test_kill_9_resume_with_other_workers_equals_an_uninterrupted_run(prepared, tmp_path):
  _, out, _ = prepared
  overrides = {
    "data.data_dir": str(out),
    "data.name": "fm3",
    "data.image_size": 32,
    "data.threads": 1,
    "model": "cifar_quick",
    "dtype": "float32",
    "batch_size": 8,
    "eval_batch_size": 8,
    "num_steps": 12,
    "checkpoint_every_steps": 3,
    "log_every_steps": 1,
    "progress": False,
    "optim.learning_rate": 0.01,
    "optim.boundaries": [],
  }
  code, output = _run(tmp_path, tmp_path / "killed", overrides, kill_at=9)
  assert code == -signal.SIGKILL, output[-2000:]
  more = {**overrides, "data.threads": 3, "data.workers": 2}  # another reading setup
  code, output = _run(tmp_path, tmp_path / "killed", more)
  assert code == 0, output[-3000:]
  assert "resumed from step" in output
  code, output = _run(tmp_path, tmp_path / "clean", overrides)
  assert code == 0, output[-2000:]

  def metrics(d):
    return [
      {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
      for line in (d / "metrics.jsonl").read_text().splitlines()
    ]

  assert metrics(tmp_path / "killed") == metrics(tmp_path / "clean")
  (_, a), (_, b) = (
    trained_run.load_state(tmp_path / "killed"),
    trained_run.load_state(tmp_path / "clean"),
  )
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_tfds_imagenet2012_streams_from_its_data_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = stream_config("", **{"data.source": "tfds", "data.name": "imagenet2012"})
  config.update(num_steps=2, batch_size=4, eval_batch_size=4)
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = data.load(settings.read(config).data)
    assert dataset.num_classes == 1000 and len(dataset.train) == 10
    assert isinstance(dataset.train, streamed.StreamSplit)
    batch = data.Batches(dataset.train, 4, seed=0).batch(1)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].max() < 1000
    summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary.dataset == "imagenet2012" and summary.test_examples == 10


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"data.augment": "cifar"}, "is streamed: use 'inception' or 'none'"),
    ({"data.workers": -1}, r"data.workers must be an int in \[0, inf\)"),
    ({"data.threads": 0}, r"data.threads must be an int in \[1, inf\)"),
  ],
)
def test_bad_stream_settings_fail_fast(overrides, match):
  with pytest.raises(settings.ConfigError, match=match):
    settings.read(stream_config("/nowhere", **overrides))


def test_inception_and_image_size_are_for_streamed_data():
  c = default.get_config()
  c.data.augment = "inception"
  with pytest.raises(settings.ConfigError, match="apply to streamed datasets"):
    settings.read(c)


def test_a_png_in_prepare_is_stored_as_rgb_jpeg(tmp_path):
  buffer = io.BytesIO()
  Image.new("RGBA", (20, 10), (1, 2, 3, 4)).save(buffer, "PNG")
  path = tmp_path / "a.png"
  path.write_bytes(buffer.getvalue())
  stored = prepare.read_image(str(path), 0, 95)
  assert stored.converted and not stored.resized
  assert images.decode_jpeg(stored.jpeg).shape == (10, 20, 3)


class _ManyImages:
  """A random-access source of `n` records that all hold one JPEG (labels vary): a dataset far
  larger than any buffer, without the disk."""

  def __init__(self, n: int, jpeg: bytes):
    self.n, self.jpeg = n, jpeg

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> bytes:
    return records.encode(index % 10, self.jpeg)


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_memory_stays_bounded_on_a_dataset_many_times_the_buffers():
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(
    buffer, "JPEG", quality=90
  )
  source = _ManyImages(2_000_000, buffer.getvalue())
  split = streamed.StreamSplit(streamed.RecordReader(source, 10), 64, True, 0, 2, "many")
  batches = data.Batches(split, 32, seed=0)
  rss = []
  for step, batch in enumerate(batches.iterate(0, 400)):
    assert batch["image"].shape == (32, 64, 64, 3)
    if step in (50, 399):
      rss.append(_rss_mb())
  # 350 steps read 11,200 images (138 MB of pixels at 64 px): none of them may stay behind
  assert rss[1] - rss[0] < 40, rss


def test_a_streamed_run_exports_and_its_files_agree(prepared, tmp_path):
  pytest.importorskip("onnxruntime")
  from train import export

  _, out, _ = prepared
  trainer.train_and_evaluate(stream_config(out, num_steps=2), tmp_path)
  results = export.export_run(tmp_path, ("onnx",), check_images=0)
  assert results["onnx"]["agreement"] == 1.0


def test_a_streamed_acb_run_is_analysed_on_an_evenly_spread_subset(prepared, tmp_path):
  from train import analyze

  _, out, _ = prepared
  trainer.train_and_evaluate(stream_config(out, conv="acb", num_steps=2), tmp_path)
  results = analyze.analyze(tmp_path, sections=["acb"], prune_seeds=0)
  acb = results["acb"]
  assert acb["distorted_examples"] == 18 and set(acb["distorted"]) >= {"original"}
  assert (tmp_path / "analysis" / "report.md").exists()
  test = data.load(settings.read(stream_config(out)).data).test
  spread = test.held(6)
  assert sorted(set(spread.labels.tolist())) == [0, 1, 2]  # every class, not the first one's


# the AlexNets need 63-67 px at least; the residual networks end in global pooling
_SMOKE_SIZE = {"alexnet": 72}
# one smoke run per config in the default suite; every zoo model x kind deploys exactly in
# models_test at its size
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  "config, arg",
  [
    ("acnet_imagenet", "model=resnet18,conv=acb_hor"),
    pytest.param("acnet_imagenet", "model=alexnet,conv=acb", marks=_SLOW),
    pytest.param("acnet_imagenet", "model=alexnet,conv=acb_bn_after_sum", marks=_SLOW),
    pytest.param("acnet_imagenet", "model=densenet121,conv=acb", marks=_SLOW),
    # its structure (a versatile classifier) is models_test's default deploy case already
    pytest.param("versatile_imagenet", "row=versatile_v2_alexnet", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=versatile_alexnet", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=alexnet", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=versatile_resnet50", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=versatile_v2_resnet50", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=resnet50", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=versatile_v2_resnext50", marks=_SLOW),
    pytest.param("versatile_imagenet", "row=resnext50", marks=_SLOW),
  ],
)
def test_imagenet_table_configs_train_a_few_steps_and_deploy_equal(prepared, tmp_path, config, arg):
  import importlib

  _, out, _ = prepared
  c = importlib.import_module(f"configs.{config}").get_config(arg)
  size = next((v for k, v in _SMOKE_SIZE.items() if k in c.model), 32)
  c.data.update(data_dir=str(out), name="fm3", image_size=size, threads=2)
  c.update(dtype="float32", batch_size=8, eval_batch_size=6, num_steps=2, progress=False)
  summary = trainer.train_and_evaluate(c, tmp_path)
  assert np.isfinite(summary.final_train_loss) and summary.deployed_prediction_agreement == 1.0


def test_the_same_images_prepared_from_a_copy_elsewhere_are_the_same_data(tmp_path, prepared):
  """A resume refused byte-identical images re-prepared from a copy of the tree at another path
  as "the data differs": the fingerprint hashed the tree's path (issue 39, case 14). Checkpoints
  saved under the earlier fingerprint still resume."""
  tree, _, meta = prepared
  shutil.copytree(tree, tmp_path / "copy" / tree.name)
  again = prepare.prepare(
    tmp_path / "copy" / tree.name,
    tmp_path / "out",
    name="fm3",
    examples_per_shard=20,
    say=lambda m: 0,
  )
  assert again.source != meta.source
  first = data.load(settings.read(stream_config(prepared[1])).data)
  second = data.load(settings.read(stream_config(tmp_path / "out")).data)
  assert first.fingerprint == second.fingerprint
  assert first.earlier_fingerprints != second.earlier_fingerprints  # the path was in them
  assert first.fingerprint not in first.earlier_fingerprints
