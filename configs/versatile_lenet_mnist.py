"""Versatile filters, LeNet on MNIST (Tables 2-3): baseline, Model 1/2/3, v2 Model 1/3.

  python -m train.main --config configs/versatile_lenet_mnist.py:variant=model3 \
      --workdir runs/vf_model3
  python -m train.main --config configs/versatile_lenet_mnist.py:variant=model3,data=fashion_mnist \
      --workdir runs/vf_fmnist_model3      # offline: Debian's dataset-fashion-mnist

Wang et al., MNIST accuracy: baseline 99.20%, Model 1 99.20%, Model 2
99.15%, Model 3 99.22% (Table 2); v2 Model 1 99.18%, v2 Model 3 99.07%
(Table 3; v2 Model 2, c - c^ = 1 with g = 2, is not representable by eq. 8).
Weights 4.3e5 (baseline) and 2.2e5 (Models 2/3). The paper trains in
MatConvNet and gives no optimizer settings; ours: SGD 0.9, cosine from
0.02, 20 epochs, batch 100, weight decay 5e-4.
"""

from configs import common, default

VARIANTS = ("model3", "baseline", "model1", "model2", "v2_model1", "v2_model3")


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, {"variant": VARIANTS, "data": ("mnist", "fashion_mnist")})
  c = default.get_config()
  c.model = "lenet"
  if a["variant"] == "baseline":
    c.conv = "plain"
  else:
    c.conv = "versatile"
    c.model_kwargs.variant = a["variant"]
  common.mnist_data(c, a["data"])
  c.batch_size, c.eval_batch_size = 100, 1000
  c.num_epochs = 20.0
  c.optim.update(learning_rate=0.02, schedule="cosine", warmup_epochs=0.2, weight_decay=5e-4)
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
