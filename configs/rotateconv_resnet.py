"""RotateConv, ResNet-20/44 on CIFAR-10/100 and SVHN (Table I): versions 9 / 4 / 2.

  python -m train.main --config configs/rotateconv_resnet.py:model=resnet20,data=cifar10,version=4 \
      --workdir runs/rc_r20_c10_v4 --config.data.data_dir=$TFDS_DIR

Table I of Ma et al., accuracy (%) for versions 9 / 4 / 2:
  ResNet-20  CIFAR-10 91.70 / 90.78 / 84.83   CIFAR-100 52.84 / 53.45 / 50.39   SVHN 95.82 / 96.01 /
  95.17
  ResNet-44  CIFAR-10 92.52 / 91.83 / 87.01   CIFAR-100 56.63 / 56.93 / 51.22   SVHN 96.02 / 96.40 /
  95.68
Parameters: 271k / 122k / 63k (ResNet-20), 657k / 294k / 148k (ResNet-44).
The recipe is He et al.'s CIFAR one (the paper cites it for version 9):
batch 128, SGD 0.9, lr 0.1 divided by 10 at epochs 82 and 123 of 164,
weight decay 1e-4; SVHN (train split only) for 40 epochs without augmentation.
"""

from configs import common, default

VERSIONS = {"9": "plain", "4": "rotate4", "2": "rotate2"}


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg,
    {
      "model": ("resnet20", "resnet44"),
      "data": ("cifar10", "cifar100", "svhn_cropped"),
      "version": ("4", "9", "2"),
    },
  )
  c = default.get_config()
  c.model, c.conv = a["model"], VERSIONS[a["version"]]
  common.cifar_data(c, a["data"])
  c.batch_size = 128
  svhn = a["data"] == "svhn_cropped"
  c.num_epochs = 40.0 if svhn else 164.0
  c.optim.update(
    learning_rate=0.1,
    schedule="staircase",
    boundaries=(20.0, 30.0) if svhn else (82.0, 123.0),
    weight_decay=1e-4,
  )
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
