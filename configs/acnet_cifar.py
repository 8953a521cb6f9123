"""ACNet on CIFAR-10/100 (Tables 1-2): Cifar-quick, VGG-16, ResNet-56, WRN-16-8, DenseNet-40, base
vs ACB.

  python -m train.main --config configs/acnet_cifar.py:model=resnet56,data=cifar10,conv=acb \
      --workdir runs/acnet_r56_c10_acb --config.data.data_dir=$TFDS_DIR
  # ablations (Table 5): --config.conv_options.asymmetric=hor | ver, --config.conv_options.bn=sum
  # ACNet's successors at its recipe: conv=dbb | repvgg; any block online:
  # --config.conv_options.online=True

Top-1 (%) of Ding et al., base -> ACNet:
  CIFAR-10:  Cifar-quick 83.13 -> 84.24, VGG 94.12 -> 94.47, ResNet-56 94.31 -> 95.09,
             WRN-16-8 95.56 -> 96.15, DenseNet-40 94.29 -> 94.84
  CIFAR-100: Cifar-quick 53.22 -> 54.30, VGG 74.56 -> 75.20, ResNet-56 73.58 -> 74.04,
             WRN-16-8 78.65 -> 79.44, DenseNet-40 73.14 -> 73.41
The accuracy is that of the deployed (fused) network, which the run reports
next to the trained one. Recipe: the paper's staircase 0.1 / 0.01 / 0.001 /
0.0001 (section 4.1; the epochs of each step are not given: ours drop at
50%, 75% and 90% of 160 epochs), batch 128, SGD 0.9, weight decay 1e-4,
pad-4 crop and flip. WRN-16-8 follows Zagoruyko and Komodakis as the paper
says: 200 epochs, lr 0.1 x 0.2 at 60, 120, 160, Nesterov, weight decay 5e-4.
"""

from configs import common, default


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg,
    {
      "model": ("cifar_quick", "vgg16", "resnet56", "wrn16_8", "densenet40"),
      "data": ("cifar10", "cifar100"),
      "conv": ("acb", "plain", "dbb", "repvgg"),
    },
  )
  c = default.get_config()
  c.model, c.conv = a["model"], a["conv"]
  common.cifar_data(c, a["data"])
  c.batch_size = 128
  if a["model"] == "wrn16_8":
    c.num_epochs = 200.0
    c.optim.update(
      learning_rate=0.1,
      schedule="staircase",
      boundaries=(60.0, 120.0, 160.0),
      factor=0.2,
      nesterov=True,
      weight_decay=5e-4,
    )
  else:
    c.num_epochs = 160.0
    c.optim.update(
      learning_rate=0.1,
      schedule="staircase",
      boundaries=(80.0, 120.0, 144.0),
      factor=0.1,
      weight_decay=1e-4,
    )
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
