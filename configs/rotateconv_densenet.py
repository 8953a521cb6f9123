"""RotateConv, DenseNet-40 on CIFAR-10/100 and SVHN (Table I): versions 9 / 4 / 2.

  python -m train.main --config configs/rotateconv_densenet.py:data=cifar100,version=4 \
      --workdir runs/rc_dn40_c100_v4 --config.data.data_dir=$TFDS_DIR

Table I of Ma et al., accuracy (%) for versions 9 / 4 / 2: CIFAR-10 92.63 /
92.68 / 81.24, CIFAR-100 70.53 / 69.99 / 50.64, SVHN 97.15 / 96.84 / 90.69;
1.9M / 0.86M / 0.43M parameters. The counts are matched by growth 17, a
34-channel stem and transitions without the 1x1 conv
(`kshapes_jax.models.densenet.DENSENET40_ROTATECONV`: 1.86M / 0.85M / 0.44M);
Huang et al.'s growth-12 network has 1.02M and is `model_kwargs.growth=12`.
Recipe of Huang et al.: batch 64, SGD Nesterov 0.9, lr 0.1 divided by 10
at 50% and 75% of 300 epochs (SVHN: 40 epochs, no augmentation), weight
decay 1e-4.
"""

from configs import common, default
from kshapes_jax.models.densenet import DENSENET40_ROTATECONV

VERSIONS = {"9": "plain", "4": "rotate4", "2": "rotate2"}


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg, {"data": ("cifar10", "cifar100", "svhn_cropped"), "version": ("4", "9", "2")}
  )
  c = default.get_config()
  c.model, c.conv = "densenet40", VERSIONS[a["version"]]
  c.model_kwargs.update(DENSENET40_ROTATECONV)
  common.cifar_data(c, a["data"])
  c.batch_size = 64
  c.num_epochs = 40.0 if a["data"] == "svhn_cropped" else 300.0
  c.optim.update(
    learning_rate=0.1,
    schedule="staircase",
    nesterov=True,
    weight_decay=1e-4,
    boundaries=(0.5 * c.num_epochs, 0.75 * c.num_epochs),
  )
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
