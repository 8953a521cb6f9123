"""The defaults every experiment config starts from (a short SN run on synthetic data).

  python -m train.main --config configs/default.py --workdir /tmp/default

Keys:
  model, conv: a registered model and the conv kind of its kxk layers.
  model_kwargs, conv_options: passed to `kshapes_jax.models.create` and to
    every shaped conv layer (e.g. conv_options.radius=3 for the ACU); the
    conv options are declared unset (CONV_OPTIONS), and only those set are
    passed.
  precision: of every conv and dense layer: "default" (the backend's: TF32
    on a GPU, bf16 passes on a TPU, float32 on a CPU), "high" or "highest"
    (exact float32, slower on a GPU). Kernels are built exactly either way.
  dtype: compute dtype, "float32" or "bfloat16" (mixed precision: bf16
    convs, dense layers and BN outputs; float32 parameters, BN statistics,
    optimizer and loss).
  deterministic: GPU runs use XLA's deterministic ops
    (--xla_gpu_deterministic_ops, set before JAX starts), so a resumed run
    equals an uninterrupted one bit for bit on the same machine; no effect
    on CPU or TPU.
  data: name (mnist, fashion_mnist, cifar10, cifar100, svhn_cropped: held
    in memory; any other TFDS dataset, e.g. imagenet2012, or the name of a
    folder of python -m train.prepare: streamed), source (tfds, idx, npz,
    synthetic, arrayrecord: the prepared folder), data_dir, augment (none;
    cifar: pad-4 crop and flip, on the device, in-memory data; inception:
    the Inception crop and flip, on the CPU, streamed data; a streamed
    evaluation resizes the shorter side to image_size / 0.875 and takes the
    centre), train_size/test_size (synthetic only); streamed only:
    image_size (0: 224), workers (grain worker processes; 0: none) and
    threads (reading threads per process).
  batch_size, eval_batch_size: global batch sizes (split over devices).
  num_epochs, or num_steps (> 0 wins).
  optim: the optimizer, name "sgd" (kshapes_jax.optim.sgd) or "adamw"
    (kshapes_jax.optim.adamw: b1, b2; weight_decay is AdamW's decoupled
    decay there, and momentum / nesterov are SGD's), with the papers'
    per-label rules (kshapes_jax.optim.with_shape_rules): learning_rate,
    schedule (constant, staircase, cosine), boundaries (epochs) and factor
    for the staircase, warmup_epochs (linear LR ramp), momentum, nesterov,
    weight_decay and decay_labels, lr_multipliers per label,
    position_warmup_steps (ACU positions frozen), angle_eps (RotateConv
    eq. 6, degrees; < 0 turns the projection off).
  max_loss_factor: the run stops as on a NaN once a step's training loss
    exceeds this x ln(classes), the loss of a uniform guess (1000: about
    2300 for 10 classes); 0: off.
  acu_radius_every_steps: ACU extent bucketing, every N steps re-jit each
    ACU with the smallest radius that holds its positions plus how far
    they can move before the next check (3x3 during the warm-up); 0: off.
  checkpoint_every_steps, keep_checkpoints, log_every_steps,
  eval_every_epochs, seed, progress (the bar), distributed (join the
  run's other processes first: train.initialize_distributed, for several hosts).
"""

import ml_collections

# Every option a conv kind takes, typed, unset: so that `--config.conv_options.radius=3` parses
# (a locked config refuses new keys). Only the set ones reach the layers.
CONV_OPTIONS = {
  "radius": int,
  "synapses": int,
  "init": str,
  "position_groups": int,
  "impl": str,  # active (impl: also versatile)
  "normalize_grad": bool,  # active, rotate4/rotate2
  "asymmetric": str,
  "bn": str,
  "border": bool,
  "asym_scale_init": float,
  "asym_size": int,  # acb
  "mode": str,
  "bias": str,
  "channel_delta": int,
  "channel_stride": int,  # versatile
  "param_dtype": str,  # every shaped kind: its weights' storage dtype, e.g. "bfloat16"
}


def conv_options() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      name: ml_collections.FieldReference(None, field_type=kind)
      for name, kind in CONV_OPTIONS.items()
    }
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.model = "sn"
  c.conv = "plain"
  c.model_kwargs = ml_collections.ConfigDict()
  c.conv_options = conv_options()
  c.precision = "default"
  c.dtype = "float32"
  c.deterministic = True
  c.data = ml_collections.ConfigDict(
    dict(
      name="mnist",
      source="synthetic",
      data_dir="",
      augment="none",
      train_size=512,
      test_size=256,
      image_size=0,
      workers=0,
      threads=8,
    )
  )
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 5.0
  c.num_steps = 0
  c.optim = ml_collections.ConfigDict(
    dict(
      name="sgd",
      b1=0.9,
      b2=0.999,
      learning_rate=0.02,
      schedule="constant",
      boundaries=(),
      factor=0.1,
      warmup_epochs=0.0,
      momentum=0.9,
      nesterov=False,
      weight_decay=5e-4,
      decay_labels=("weights",),
      lr_multipliers={"positions": 0.01},
      position_warmup_steps=0,
      angle_eps=1.0,
    )
  )
  c.max_loss_factor = 1000.0
  c.acu_radius_every_steps = 0
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.log_every_steps = 20
  c.eval_every_epochs = 1
  c.seed = 0
  c.progress = True
  c.distributed = False
  return c
