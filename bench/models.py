"""Whole-model cases: the training system's own jitted train step (SGD with the papers' rules) and
eval step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kshapes_jax as K
from bench.timing import compile_timed, run_interleaved
from kshapes_jax import optim
from train.trainer.evaluation import make_eval_step
from train.trainer.state import TrainState
from train.trainer.step import make_train_step

# (group, case name, model, conv kind, extra create kwargs, deployed?); the first case of a group is
# its base
MODEL_CASES = (
  ("resnet20", "plain", "resnet20", "plain", {}, False),
  ("resnet20", "rotate4", "resnet20", "rotate4", {}, False),
  ("resnet20", "rotate2", "resnet20", "rotate2", {}, False),
  ("resnet56", "plain", "resnet56", "plain", {}, False),
  ("resnet56", "acb", "resnet56", "acb", {}, False),  # impl "auto"
  ("resnet56", "acb_branches", "resnet56", "acb", {"conv_options": {"impl": "branches"}}, False),
  ("resnet56", "acb_stacked", "resnet56", "acb", {"conv_options": {"impl": "stacked"}}, False),
  ("resnet56", "acb_deployed", "resnet56", "acb", {}, True),
  ("acu_plain", "plain", "acu_plain", "plain", {}, False),
  ("acu_plain", "active_r1", "acu_plain", "active", {"conv_options": {"radius": 1}}, False),
  ("acu_plain", "active_r2", "acu_plain", "active", {}, False),
  ("lenet", "baseline", "lenet", "plain", {}, False),
  ("lenet", "model3", "lenet", "versatile", {"variant": "model3"}, False),  # impl "auto"
  (
    "lenet",
    "model3_stacked",
    "lenet",
    "versatile",
    {"variant": "model3", "conv_options": {"impl": "stacked"}},
    False,
  ),
  (
    "lenet",
    "model3_cropped",
    "lenet",
    "versatile",
    {"variant": "model3", "conv_options": {"impl": "cropped"}},
    False,
  ),
  ("lenet", "v2_model1", "lenet", "versatile", {"variant": "v2_model1"}, False),
  (
    "lenet",
    "v2_model1_stacked",
    "lenet",
    "versatile",
    {"variant": "v2_model1", "conv_options": {"impl": "stacked"}},
    False,
  ),
  (
    "lenet",
    "v2_model1_cropped",
    "lenet",
    "versatile",
    {"variant": "v2_model1", "conv_options": {"impl": "cropped"}},
    False,
  ),
  *(
    (f"{net}_224", case, net, conv, kwargs, deployed)
    for net in ("resnet18", "resnet50")
    for case, conv, kwargs, deployed in (
      ("plain", "plain", {}, False),
      ("rotate4", "rotate4", {}, False),
      ("rotate2", "rotate2", {}, False),
      ("acb", "acb", {}, False),
      ("acb_deployed", "acb", {}, True),
      ("versatile", "versatile", {}, False),
      ("versatile_stacked", "versatile", {"conv_options": {"impl": "stacked"}}, False),
      ("versatile_cropped", "versatile", {"conv_options": {"impl": "cropped"}}, False),
      ("active", "active", {}, False),
    )
  ),
)
GPU_ONLY = ("resnet18_224", "resnet50_224")  # ImageNet-size nets: minutes per step on 2 CPU cores


def _model(name, conv, kwargs, deployed, num_classes):
  model = K.models.create(name, conv=conv, num_classes=num_classes, rngs=nnx.Rngs(0), **kwargs)
  if deployed:
    model = K.deploy(model)  # eval mode; trained below in train mode like any plain network
  model.train()
  return model


def _cases_for(model, batch, shape, rng):
  """(train Timed args, eval Timed args) built the way trainer.train_and_evaluate builds them."""
  stats = dict(mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1])
  labels = optim.param_labels(model)
  tx = optim.sgd(
    labels, 0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, bounds=optim.param_bounds(model)
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
  state = jax.device_put(TrainState.create(tx, params, rest))
  images = jnp.asarray(rng.integers(0, 256, (batch, *shape)), jnp.uint8)
  batch_arrays = {"image": images, "label": jnp.asarray(rng.integers(0, 10, (batch,)), jnp.int32)}
  eval_batch = dict(batch_arrays, mask=jnp.ones((batch,), bool))
  train_step = make_train_step(graphdef, tx, **stats, augment="none", seed=0)
  eval_step = make_eval_step(eval_graphdef, **stats)
  copy = jax.tree.map(jnp.copy, (params, rest))  # the train case donates its state
  return (train_step, state, batch_arrays), (eval_step, *copy, eval_batch)


def bench_models(
  batch: int,
  reps: int,
  groups: list[str] | None = None,
  log=print,
  imagenet_batch: int | None = None,
) -> list[dict]:
  """Times every case; ratios are against the first case of its group.

  groups=None runs every group, except the GPU_ONLY ones on a CPU; the
  ImageNet-size groups use `imagenet_batch` (default: `batch`).
  """
  rows = []
  rng = np.random.default_rng(0)
  if groups is None:
    groups = [c[0] for c in MODEL_CASES if jax.default_backend() != "cpu" or c[0] not in GPU_ONLY]
  wanted = [c for c in MODEL_CASES if c[0] in groups]
  for group in dict.fromkeys(c[0] for c in wanted):
    size = imagenet_batch if (imagenet_batch and group in GPU_ONLY) else batch
    train_cases, eval_cases, meta = [], [], []
    for _, case, name, conv, kwargs, deployed in (c for c in wanted if c[0] == group):
      spec = K.models.spec(name)
      model = _model(name, conv, kwargs, deployed, 10)
      params_count = K.models.count_params(model)
      (step, state, b), (ev, p, r, eb) = _cases_for(model, size, spec.input_shape, rng)
      train_cases.append(compile_timed(case, step, (state, b), donate=True))
      eval_cases.append(compile_timed(case, ev, (p, r, eb)))
      meta.append((name, conv, params_count))
    run_interleaved(train_cases, reps, warmup=1, carry=True)
    run_interleaved(eval_cases, reps)
    base_t, base_e = train_cases[0].median_ms, eval_cases[0].median_ms
    for t, e, (name, conv, count) in zip(train_cases, eval_cases, meta):
      rows.append(
        {
          "group": group,
          "case": t.name,
          "model": name,
          "conv": conv,
          "parameters": count,
          "train_ms": t.median_ms,
          "eval_ms": e.median_ms,
          "train_ratio": t.median_ms / base_t,
          "eval_ratio": e.median_ms / base_e,
          "compile_train_s": t.compile_s,
          "batch": size,
          "images_per_s": size / (t.median_ms / 1e3),
        }
      )
      log(
        f"  model {group:<10} {t.name:<13} train {t.median_ms:8.1f} ms "
        f"({t.median_ms / base_t:5.2f}x)"
        f"  eval {e.median_ms:7.1f} ms ({e.median_ms / base_e:5.2f}x)  compile {t.compile_s:5.1f} s"
      )
  jax.clear_caches()
  return rows
