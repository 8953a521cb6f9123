"""RotateConv, SN on MNIST (Table I, first column group): versions 9 / 4 / 2.

  python -m train.main --config configs/rotateconv_sn_mnist.py:version=4 --workdir runs/sn_mnist_v4
  python -m train.main --config configs/rotateconv_sn_mnist.py:version=4,data=fashion_mnist \
      --workdir runs/sn_fmnist_v4          # offline: Debian's dataset-fashion-mnist

Compare with Table I of Ma et al. (MNIST accuracy): version 9 (plain 3x3)
98.95%, version 4 98.65%, version 2 97.41%; 55k / 25k / 13k parameters.
The paper gives no optimizer settings for SN; these (SGD 0.9, cosine from
0.02, 20 epochs, batch 64) are ours (from 0.05, version 2 diverged on
Fashion-MNIST at step 275). MNIST comes through TFDS
(--config.data.data_dir=DIR); Fashion-MNIST from the Debian IDX files.
"""

from configs import common, default

VERSIONS = {"9": "plain", "4": "rotate4", "2": "rotate2"}


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, {"version": ("4", "9", "2"), "data": ("mnist", "fashion_mnist")})
  c = default.get_config()
  c.model, c.conv = "sn", VERSIONS[a["version"]]
  common.mnist_data(c, a["data"])
  c.batch_size, c.eval_batch_size = 64, 1000
  c.num_epochs = 20.0
  c.optim.update(learning_rate=0.02, schedule="cosine", warmup_epochs=0.2, weight_decay=5e-4)
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
