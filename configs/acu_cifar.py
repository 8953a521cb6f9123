"""Active Convolution Unit on CIFAR-10/100: the plain network (Table 2) and pre-activation residual
ones (Table 3).

  python -m train.main --config configs/acu_cifar.py:model=acu_plain,data=cifar10,conv=active \
      --workdir runs/acu_plain_c10 --config.data.data_dir=$TFDS_DIR
  # ablations: --config.optim.position_warmup_steps=0 (no warm-up),
  #            --config.conv_options.normalize_grad=False (raw position gradient)

Jeon and Kim, test ERROR (%), baseline -> ACU:
  plain network (Table 2):      CIFAR-10 8.01 -> 7.33,  CIFAR-100 27.85 -> 27.11
  basic residual (Table 3):     CIFAR-10 8.01 -> 7.54,  CIFAR-100 30.06 -> 29.38
  bottleneck residual (Table 3): CIFAR-10 7.64 -> 7.12, CIFAR-100 27.93 -> 27.47
(the run reports accuracy = 100 - error). Recipe of section 3.1: 64k
iterations of batch 64, SGD with Nesterov momentum 0.9, lr 0.1 divided by
10 after 32k and 48k iterations, weight decay 1e-4, positions at 0.01 x
the learning rate with the normalized gradient, frozen for the first 10k
iterations; pad-4 crop and flip. The paper also applies global contrast
normalisation and ZCA whitening; we normalise per channel. Extent
bucketing (acu_radius_every_steps) runs the ACUs as 3x3 convs while the
positions are frozen and as 5x5 after; --config.acu_radius_every_steps=0
keeps 5x5 throughout (the same results up to float rounding).

conv=dcls trains the same networks with DCLS (Khalfaoui-Hassani et al., the
ACU's successor: a position per element of every (input, output) pair, in a
5 x 5 window for the 3x3 convs, K = 9) at this recipe, its positions and
sigmas at 5 x the learning rate as ConvNeXt-dcls trains them.
"""

from configs import common, default

MODELS = ("acu_plain", "preact_resnet32", "preact_resnet47_bottleneck")


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg, {"model": MODELS, "data": ("cifar10", "cifar100"), "conv": ("active", "plain", "dcls")}
  )
  c = default.get_config()
  c.model, c.conv = a["model"], a["conv"]
  common.cifar_data(c, a["data"])
  c.batch_size = 64
  steps_per_epoch = 50000 // 64
  c.num_steps = 64000
  c.optim.update(
    learning_rate=0.1,
    schedule="staircase",
    nesterov=True,
    weight_decay=1e-4,
    boundaries=(32000 / steps_per_epoch, 48000 / steps_per_epoch),
    # DCLS (conv=dcls, the ACU's successor on the ACU's recipe): its positions and sigmas at 5 x
    lr_multipliers={"positions": 0.01, "dcls_positions": 5.0, "dcls_sigmas": 5.0},
    position_warmup_steps=10000,
  )
  c.acu_radius_every_steps = 100  # 3x3 convs during the warm-up; R = 2 (5x5) once positions move
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 50
  return c
