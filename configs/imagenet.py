"""ResNet-18 on ImageNet, streamed at 224 px: the reference recipe every paper's table starts from.

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar --name imagenet2012
  python -m train.main --config configs/imagenet.py --workdir runs/r18 \\
      --config.data.data_dir=/data/imagenet-ar
  python -m train.main --config configs/imagenet.py:source=tfds --workdir runs/r18   # TFDS's

/data/imagenet is torchvision's ImageFolder layout (train/CLASS/*.JPEG, val/CLASS/*.JPEG). The
recipe is torchvision's reference ResNet-18 (top-1 69.76%): SGD with momentum 0.9, learning
rate 0.1 for batch 256, divided by 10 at epochs 30 and 60, 90 epochs, weight decay 1e-4 (here on
the weights only, not on BN, as the papers' rules in kshapes_jax.optim decay), Inception crop
and flip at 224 px, evaluation on the shorter side resized to 256 and its centre 224 crop.
Compute is bfloat16 with float32 parameters, BN statistics and optimizer; the batch is split
over every device of every process (for several hosts add --config.distributed=True:
docs/guides/training.md).
`--config.conv=acb` (or rotate4, versatile, active) swaps the 3x3 convolutions.
"""

from configs import common, default


def get_config(arg: str | None = None):
  """arg: source=arrayrecord (default; data.data_dir = a folder of python -m train.prepare) or
  source=tfds (tfds.data_source("imagenet2012"), prepared in TFDS_DATA_DIR or data.data_dir)."""
  source = common.parse_arg(arg, {"source": ("arrayrecord", "tfds")})["source"]
  c = default.get_config()
  c.model, c.conv = "resnet18", "plain"
  c.dtype = "bfloat16"
  c.data.update(
    name="imagenet2012", source=source, augment="inception", image_size=224, workers=0, threads=16
  )
  c.batch_size = 256
  c.eval_batch_size = 500
  c.num_epochs = 90.0
  c.optim.update(
    name="sgd",
    learning_rate=0.1,
    schedule="staircase",
    boundaries=(30.0, 60.0),
    factor=0.1,
    momentum=0.9,
    weight_decay=1e-4,
  )
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 100
  c.eval_every_epochs = 1
  return c
