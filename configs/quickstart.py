"""Quickstart: SN with RotateConv v4 on Fashion-MNIST, 3 epochs (its time and accuracy: the
guide docs/guides/getting-started.md).

  apt-get install -y dataset-fashion-mnist     # the IDX files, offline
  python -m train.main --config configs/quickstart.py --workdir runs/quickstart

It prints the test accuracy of the trained model and of its deployed plain
twin, and writes runs/quickstart/learning_curve.png. The RotateConv paper
reports SN version 4 on MNIST at 98.65% (Table I); Fashion-MNIST is a harder
drop-in, see docs/guides/getting-started.md for what this config reaches.
"""

from configs import common, default


def get_config(arg: str | None = None):
  c = default.get_config(arg)
  c.model, c.conv = "sn", "rotate4"
  common.mnist_data(c, "fashion_mnist")
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 3.0
  c.optim.update(learning_rate=0.05, schedule="cosine", warmup_epochs=0.1, weight_decay=5e-4)
  c.checkpoint_every_steps = 200
  c.log_every_steps = 25
  return c
