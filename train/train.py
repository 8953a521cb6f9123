"""The training loop: jitted data-parallel steps, orbax checkpoints, metrics, plots.

`train_and_evaluate(config, workdir)` trains the model a config names on its
dataset and writes into workdir:

- `checkpoints/`: orbax CheckpointManager steps (every N steps and at the
  end or on SIGTERM/Ctrl-C; the last K kept). A second call with the same
  workdir resumes from the latest one; the batches and augmentation are
  functions of the step, so the resumed run is the uninterrupted one.
- `metrics.jsonl`: one JSON object per epoch (train loss/accuracy, test
  loss/accuracy, learning rate, images/s).
- `learning_curve.png`: loss and accuracy per epoch.
- `summary.json`: final test accuracy of the trained model AND of
  `deploy(model)`, parameter counts, timings.

The state that crosses the jitted step is a dict of pytrees (nnx.State for the
parameters and the rest of the model state, the optax state, the step and the
running sums of the epoch's metrics), replicated over a 1-D device mesh while
every batch is sharded along it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from kshapes_jax import _validation, optim
from train import determinism, input_pipeline


class ConfigError(ValueError):
  """A config that cannot run; raised before any data is read or code compiled."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf."""


class _Stop(Exception):
  """SIGTERM: leave the loop through the checkpointing `finally`."""


# ---------------------------------------------------------------- config checks


def check_config(config) -> None:
  """Fails fast, with the valid choices, on a config that cannot run."""
  try:
    _validation.precision(config.get("precision", "default"))
  except ValueError as e:
    raise ConfigError(f"config.precision: {e}") from e
  try:
    _validation.compute_dtype(config.get("dtype", "float32"))
  except ValueError as e:
    raise ConfigError(f"config.dtype must be a floating dtype such as 'float32' or 'bfloat16', "
                      f"got {config.dtype!r}") from e
  if config.model not in K.models.list_models():
    raise ConfigError(f"unknown model {config.model!r}; expected one of {K.models.list_models()}")
  kinds = K.models.spec(config.model).kinds
  if config.conv not in kinds:
    raise ConfigError(f"conv kind {config.conv!r} does not apply to {config.model}; it takes {list(kinds)}")
  if config.data.name not in input_pipeline.DATASETS:
    raise ConfigError(f"unknown dataset {config.data.name!r}; expected one of "
                      f"{sorted(input_pipeline.DATASETS)}")
  if config.data.source not in input_pipeline.SOURCES:
    raise ConfigError(f"unknown data source {config.data.source!r}; expected one of "
                      f"{list(input_pipeline.SOURCES)}")
  if config.data.augment not in ("none", "cifar"):
    raise ConfigError(f"data.augment must be 'none' or 'cifar', got {config.data.augment!r}")
  for key in ("batch_size", "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
              "log_every_steps", "eval_every_epochs"):
    if not isinstance(config[key], int) or config[key] < 1:
      raise ConfigError(f"{key} must be an int >= 1, got {config[key]!r}")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ConfigError(f"{key}={config[key]} must be a multiple of the {devices} devices "
                        "(each device gets an equal share)")
  every = config.get("acu_radius_every_steps", 0)
  if not isinstance(every, int) or every < 0:
    raise ConfigError(f"acu_radius_every_steps must be an int >= 0 (0: off), got {every!r}")
  o = config.optim
  if every and "positions" in o.decay_labels:
    raise ConfigError("acu_radius_every_steps needs positions without weight decay (the margin bounds "
                      "only the normalized gradient's steps)")
  if o.schedule not in ("constant", "staircase", "cosine"):
    raise ConfigError(f"optim.schedule must be constant, staircase or cosine, got {o.schedule!r}")
  if o.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got {o.learning_rate}")
  for label in list(o.decay_labels) + list(o.lr_multipliers):
    if label not in optim.LABELS:
      raise ConfigError(f"unknown parameter label {label!r} in optim; expected some of {list(optim.LABELS)}")


# ---------------------------------------------------------------- model and state


def build_model(config, dataset: input_pipeline.Dataset) -> nnx.Module:
  """The config's model for the dataset's classes and channels; checks the input shape."""
  kwargs = dict(config.model_kwargs)
  if config.conv_options:
    kwargs["conv_options"] = dict(config.conv_options)
  spec = K.models.spec(config.model)
  if dataset.image_shape[-1] != spec.input_shape[-1]:
    kwargs["in_channels"] = dataset.image_shape[-1]
  if spec.takes_image_size and dataset.image_shape[:2] != spec.input_shape[:2]:
    kwargs["image_size"] = dataset.image_shape[0]
  try:
    model = K.models.create(config.model, conv=config.conv, num_classes=dataset.num_classes,
                            rngs=nnx.Rngs(config.seed), precision=config.get("precision", "default"),
                            dtype=config.get("dtype", "float32"), **kwargs)
    nnx.eval_shape(lambda m: m(jnp.zeros((2, *dataset.image_shape))), model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{config.model} (conv={config.conv}) cannot take {dataset.name} images of shape "
                      f"{dataset.image_shape} (it is built for {spec.input_shape}): {e}") from e
  return model


def make_optimizer(config, labels, steps_per_epoch: int, total_steps: int):
  """The SGD of the config with the papers' per-label rules; returns (tx, schedule)."""
  o = config.optim
  schedule = optim.make_schedule(
      o.schedule, o.learning_rate, total_steps,
      boundaries=[round(b * steps_per_epoch) for b in o.boundaries], factor=o.factor,
      warmup_steps=round(o.warmup_epochs * steps_per_epoch))
  tx = optim.sgd(labels, schedule, momentum=o.momentum, nesterov=o.nesterov,
                 weight_decay=o.weight_decay, decay_labels=tuple(o.decay_labels),
                 lr_multipliers=dict(o.lr_multipliers), freeze_steps=o.position_warmup_steps,
                 angle_eps=o.angle_eps if o.angle_eps >= 0 else None)
  return tx, schedule


def initial_state(tx, params, rest, radii=None) -> dict[str, Any]:
  """The dict of pytrees the jitted step carries (and orbax saves), at step 0."""
  state = {"params": params, "rest": rest, "opt_state": tx.init(params), "step": jnp.zeros([], jnp.int32),
           "bad_step": jnp.full([], -1, jnp.int32), "sums": zero_sums()}
  if radii:  # ACU radii under extent bucketing; orbax cannot save an empty array
    state["radii"] = jnp.asarray(radii, jnp.int32)
  return state


def zero_sums():
  """The running sums of an epoch's training loss, correct predictions and examples."""
  return {"loss": jnp.zeros([], jnp.float32), "correct": jnp.zeros([], jnp.int32),
          "count": jnp.zeros([], jnp.int32)}


def make_train_step(graphdef, tx, dataset: input_pipeline.Dataset, augment: str, seed: int):
  """step(state, batch) -> (state, loss): one SGD step; `state` is donated."""
  base_key = jax.random.key(seed)

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    x = input_pipeline.preprocess(batch["image"], key, mean=dataset.mean, std=dataset.std,
                                  augment=augment)
    y = batch["label"]

    def loss_fn(params):
      # fresh Variables for this trace level: BN updates its statistics in place
      rest = jax.tree.map(lambda v: v, state["rest"])
      model = nnx.merge(graphdef, params, rest)
      logits = model(x).astype(jnp.float32)  # the loss in float32 also under mixed precision
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, nnx.split(model, nnx.Param, ...)[2])

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # a finite loss can still give non-finite params (a huge step): check both
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
    bad = jnp.logical_and(state["bad_step"] < 0, ~finite)
    sums = state["sums"]
    new_state = {
        "params": params, "rest": rest, "opt_state": opt_state, "step": state["step"] + 1,
        **({"radii": state["radii"]} if "radii" in state else {}),
        "bad_step": jnp.where(bad, state["step"], state["bad_step"]),
        "sums": {"loss": sums["loss"] + loss * y.shape[0],
                 "correct": sums["correct"] + jnp.sum(jnp.argmax(logits, -1) == y),
                 "count": sums["count"] + y.shape[0]},
    }
    return new_state, loss

  return step


def make_eval_step(graphdef, dataset: input_pipeline.Dataset):
  """eval(params, rest, batch) -> (loss sum, correct, count, argmax) over the unmasked rows."""

  def evaluate(params, rest, batch):
    x = input_pipeline.preprocess(batch["image"], None, mean=dataset.mean, std=dataset.std)
    logits = nnx.merge(graphdef, params, rest)(x).astype(jnp.float32)
    mask = batch["mask"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    pred = jnp.argmax(logits, -1)
    return (jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(mask & (pred == batch["label"])),
            jnp.sum(mask), pred)

  return evaluate


@dataclasses.dataclass
class Evaluator:
  """Runs a model (graphdef + state) over a split, data parallel."""

  graphdef: Any
  dataset: input_pipeline.Dataset
  batch_size: int
  mesh: jax.sharding.Mesh

  def __post_init__(self):
    rep = NamedSharding(self.mesh, P())
    self._data = NamedSharding(self.mesh, P("data"))
    self._fn = jax.jit(make_eval_step(self.graphdef, self.dataset), out_shardings=rep)

  def __call__(self, params, rest, split: input_pipeline.Split) -> dict[str, Any]:
    loss, correct, count, preds = 0.0, 0, 0, []
    for batch in input_pipeline.eval_batches(split, self.batch_size, process_index=jax.process_index(),
                                             process_count=jax.process_count()):
      b = _shard(batch, self._data)
      batch_loss, c, n, p = self._fn(params, rest, b)
      loss, correct, count = loss + float(batch_loss), correct + int(c), count + int(n)
      preds.append(np.asarray(p)[np.asarray(batch["mask"])] if jax.process_count() == 1 else None)
    out = {"loss": loss / count, "accuracy": correct / count, "count": count}
    if jax.process_count() == 1:
      out["predictions"] = np.concatenate(preds)
    return out


def _shard(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows -> a global array sharded along the batch."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# ---------------------------------------------------------------- output


def write_plot(history: list[dict], path: Path, title: str) -> None:
  """Loss and accuracy per epoch, train and test, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = [h["epoch"] for h in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
  tested = [h for h in history if "test_loss" in h]
  ax_loss.plot([h["epoch"] for h in tested], [h["test_loss"] for h in tested], "s--", label="test")
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
  ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
  ax_acc.plot([h["epoch"] for h in tested], [100 * h["test_accuracy"] for h in tested], "s--", label="test")
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _progress(total: int, initial: int, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return contextlib.nullcontext(None)
  from tqdm import tqdm

  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)


# ---------------------------------------------------------------- ACU extent bucketing


def active_layers(model: nnx.Module) -> list[tuple[tuple, K.nn.ActiveConv]]:
  """(path, layer) of every ActiveConv, in a fixed order."""
  return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, K.nn.ActiveConv)]


def check_bucketing(layers) -> None:
  for path, layer in layers:
    if layer.impl != "splat" or not layer.normalize_grad:
      raise ConfigError(f"acu_radius_every_steps needs splat ACUs with the normalized gradient; "
                        f"{'/'.join(map(str, path))} has impl={layer.impl!r}, "
                        f"normalize_grad={layer.normalize_grad}")


def bucketed_radii(config, layers, params, step: int) -> list[int]:
  """Each ACU's radius for the steps from `step` to the next check (extent bucketing).

  The positions get the normalized gradient, a unit vector per synapse, so
  with momentum m one step moves a coordinate by at most
  lr * multiplier / (1 - m) (Nesterov included); while they are frozen
  (the warm-up) they do not move at all. The radius holds the positions plus
  that margin, capped at the layer's own radius, so no synapse is clipped
  that the fixed-radius run would not clip: the result is that run's, up to
  float rounding, while the conv is 3x3 until the synapses move out.
  """
  o, every = config.optim, config.acu_radius_every_steps
  warmup = o.position_warmup_steps
  next_check = (step // every + 1) * every
  if step < warmup:
    next_check = min(next_check, warmup)
  moving = max(0, next_check - max(step, warmup))
  margin = moving * o.learning_rate * dict(o.lr_multipliers).get("positions", 1.0) / (1 - o.momentum)
  radii = []
  for path, layer in layers:
    node = params
    for key in path:
      node = node[key]
    radii.append(K.nn.bucket_radius(np.asarray(node["positions"].get_value()), margin, layer.max_radius))
  return radii


# ---------------------------------------------------------------- the loop


def train_and_evaluate(config, workdir: str | Path) -> dict[str, Any]:
  """Trains config's model on its dataset in workdir (resuming if it holds checkpoints).

  Returns:
    The summary that is also written to workdir/summary.json.

  Raises:
    ConfigError: for a config that cannot run (before anything is compiled).
    input_pipeline.DataError: for a dataset that is missing, with how to get it.
    TrainingDiverged: when the loss becomes NaN or inf; the checkpoints keep
      the last good state.
  """
  deterministic = determinism.request(config.get("deterministic", True))
  if config.get("distributed", False):
    jax.distributed.initialize()
  check_config(config)
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  data_cfg = config.data.copy_and_resolve_references()
  with data_cfg.unlocked():
    data_cfg.seed = config.seed
  dataset = input_pipeline.load(data_cfg)
  batches = input_pipeline.Batches(dataset.train, config.batch_size, config.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count())
  steps_per_epoch = batches.steps_per_epoch
  total_steps = config.num_steps if config.num_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
  model = build_model(config, dataset)
  num_params = K.models.count_params(model)
  labels = optim.param_labels(model)
  tx, schedule = make_optimizer(config, labels, steps_per_epoch, total_steps)

  # Auto axes: XLA propagates the batch sharding (no sharding-in-types rules to satisfy)
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  acus = active_layers(model)
  bucketing = bool(config.acu_radius_every_steps and acus)
  if bucketing:
    check_bucketing(acus)
  model.train()
  _, params, rest = nnx.split(model, nnx.Param, ...)
  state = jax.device_put(initial_state(tx, params, rest, [layer.radius for _, layer in acus]), replicated)

  ckpt_dir = workdir / "checkpoints"
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
      item_names=("state", "history"))
  history: list[dict] = []
  start = 0
  if manager.latest_step() is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    state, history = restored.state, list(restored.history)
    start = int(state["step"])
    if jax.process_index() == 0:
      print(f"resumed from step {start} ({ckpt_dir})", flush=True)
  metrics_path = workdir / "metrics.jsonl"
  if jax.process_index() == 0:  # what `python -m train.analyze` rebuilds the model from
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  if jax.process_index() == 0:  # rewritten from the checkpoint: drops epochs logged after it
    metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

  programs: dict[tuple[int, ...], tuple] = {}

  def programs_for(radii) -> tuple:
    """(eval graphdef, jitted train step, evaluator) for these ACU radii, cached."""
    key = tuple(int(r) for r in radii)
    if key not in programs:
      for (_, layer), r in zip(acus, key):
        layer.radius = r
      model.train()
      train_graphdef = nnx.split(model, nnx.Param, ...)[0]
      model.eval()
      eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
      step_fn = jax.jit(make_train_step(train_graphdef, tx, dataset, config.data.augment, config.seed),
                        in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated),
                        donate_argnums=0)
      programs[key] = (eval_graphdef, step_fn,
                       Evaluator(eval_graphdef, dataset, config.eval_batch_size, mesh))
    return programs[key]

  radii = [int(r) for r in jax.device_get(state["radii"])] if acus else []
  eval_graphdef, train_step, evaluate = programs_for(radii)
  title = f"{config.model} / {config.conv} on {dataset.name}"

  def save(step: int) -> None:
    check_finite()
    if manager.latest_step() != step:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 history=ocp.args.JsonSave(history)))

  def check_finite() -> None:
    bad = int(state["bad_step"])
    if bad >= 0:
      manager.wait_until_finished()
      last = manager.latest_step()
      raise TrainingDiverged(
          f"the training loss or parameters became NaN or inf at step {bad} (epoch {bad // steps_per_epoch + 1}); "
          + (f"stopped. The last good checkpoint is step {last} in {ckpt_dir}. " if last is not None else
             "stopped before any checkpoint was saved. ")
          + "Try a lower optim.learning_rate or a warm-up (optim.warmup_epochs).")

  def end_epoch(step: int, seconds: float, images: int) -> None:
    sums = jax.device_get(state["sums"])
    record = {"epoch": math.ceil(step / steps_per_epoch), "step": step,
              "train_loss": float(sums["loss"]) / max(int(sums["count"]), 1),
              "train_accuracy": int(sums["correct"]) / max(int(sums["count"]), 1),
              "learning_rate": float(schedule(step - 1)), "images_per_s": images / max(seconds, 1e-9)}
    if record["epoch"] % config.eval_every_epochs == 0 or step == total_steps:
      test = evaluate(state["params"], state["rest"], dataset.test)
      record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
    history.append(record)
    state["sums"] = jax.device_put(zero_sums(), replicated)
    if jax.process_index() == 0:
      with metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
      write_plot(history, workdir / "learning_curve.png", title)

  on_main_thread = threading.current_thread() is threading.main_thread()
  previous_handler = signal.signal(signal.SIGTERM, _raise_stop) if on_main_thread else None
  if jax.process_index() == 0:
    print(f"{title}: {num_params:,} parameters, {steps_per_epoch} steps/epoch, {total_steps} steps, "
          f"{jax.device_count()} device(s) ({jax.devices()[0].platform})", flush=True)
  step, clean_exit = start, False
  t_epoch, images_epoch, t_first_step = time.perf_counter(), 0, None
  try:
    with _progress(total_steps, start, config.progress) as bar:
      for batch in batches.iterate(start, total_steps):
        if bucketing and (step % config.acu_radius_every_steps == 0
                          or step == config.optim.position_warmup_steps):
          new_radii = bucketed_radii(config, acus, state["params"], step)
          if new_radii != radii:
            radii = new_radii
            state["radii"] = jax.device_put(jnp.asarray(radii, jnp.int32), replicated)
            eval_graphdef, train_step, evaluate = programs_for(radii)
            if bar is not None:
              bar.write(f"step {step}: ACU radii -> {radii}")
        state, loss = train_step(state, _shard(batch, data_sharding))
        step += 1
        if t_first_step is None:
          jax.block_until_ready(loss)
          t_first_step = time.perf_counter()  # compile + first step
          t_epoch, images_epoch = time.perf_counter(), 0
        else:
          images_epoch += config.batch_size
        if step % config.log_every_steps == 0 or step == total_steps:
          check_finite()
          if bar is not None:
            sums = jax.device_get(state["sums"])
            rate = images_epoch / max(time.perf_counter() - t_epoch, 1e-9)
            bar.set_postfix(loss=f"{float(loss):.4f}",
                            acc=f"{int(sums['correct']) / max(int(sums['count']), 1):.3f}",
                            img_s=f"{rate:.0f}", lr=f"{float(schedule(step - 1)):.3g}", refresh=False)
        if bar is not None:
          bar.update(1)
        if step % steps_per_epoch == 0 or step == total_steps:
          check_finite()
          end_epoch(step, time.perf_counter() - t_epoch, images_epoch)
          last = history[-1]
          if bar is not None:
            test = (f", test loss {last['test_loss']:.4f} acc {100 * last['test_accuracy']:.2f}%"
                    if "test_accuracy" in last else "")
            bar.write(f"epoch {last['epoch']}: train loss {last['train_loss']:.4f} "
                      f"acc {100 * last['train_accuracy']:.2f}%{test}, {last['images_per_s']:.0f} images/s")
          t_epoch, images_epoch = time.perf_counter(), 0
        if step % config.checkpoint_every_steps == 0:
          save(step)
    clean_exit = True
  except (KeyboardInterrupt, _Stop):
    if jax.process_index() == 0:
      print(f"\ninterrupted at step {step}; saving a checkpoint to resume from", flush=True)
  finally:
    if on_main_thread:
      signal.signal(signal.SIGTERM, previous_handler)
    if step > start or clean_exit:
      try:
        save(step)
      finally:
        manager.wait_until_finished()
  if not clean_exit:
    manager.close()
    raise KeyboardInterrupt(f"training stopped at step {step}; run the same command to resume")

  # Final: the trained model and its deployed (plain-conv) twin on the test set.
  trained = evaluate(state["params"], state["rest"], dataset.test)
  model = nnx.merge(eval_graphdef, state["params"], state["rest"])
  shipped = K.deploy(model)
  d_graphdef, d_params, d_rest = nnx.split(shipped, nnx.Param, ...)
  deployed = Evaluator(d_graphdef, dataset, config.eval_batch_size, mesh)(d_params, d_rest, dataset.test)
  agree = (float(np.mean(trained["predictions"] == deployed["predictions"]))
           if "predictions" in trained else None)
  summary = {
      "model": config.model, "conv": config.conv, "dataset": dataset.name, "source": config.data.source,
      "seed": config.seed, "steps": step, "epochs": step / steps_per_epoch, "devices": jax.device_count(),
      "platform": jax.devices()[0].platform,
      "precision": config.get("precision", "default"), "dtype": config.get("dtype", "float32"),
      "deterministic": deterministic,
      "parameters": num_params, "deployed_parameters": K.models.count_params(shipped),
      "test_accuracy": trained["accuracy"], "test_loss": trained["loss"],
      "deployed_test_accuracy": deployed["accuracy"], "deployed_test_loss": deployed["loss"],
      "deployed_prediction_agreement": agree,
      "test_examples": trained["count"],
      "acu_radii": radii,
      "final_train_loss": history[-1]["train_loss"] if history else None,
      "seconds_total": time.perf_counter() - t_start,
      "workdir": str(workdir),
  }
  manager.close()
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"test accuracy {100 * summary['test_accuracy']:.2f}% (deployed: "
          f"{100 * summary['deployed_test_accuracy']:.2f}%, predictions agree on "
          f"{100 * (agree if agree is not None else float('nan')):.2f}%), "
          f"{num_params:,} parameters ({summary['deployed_parameters']:,} deployed), "
          f"{summary['seconds_total']:.0f} s; written to {workdir}", flush=True)
  return summary


def _raise_stop(signum, frame):
  del signum, frame
  raise _Stop()
