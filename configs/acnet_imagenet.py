"""ACNet on ImageNet: Table 3 (AlexNet, ResNet-18, DenseNet-121, base and ACNet) and Table 4's
AlexNet and ResNet-18 ablations, streamed at 224 px.

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar --name imagenet2012
  python -m train.main --config configs/acnet_imagenet.py:model=resnet18,conv=acb \\
      --workdir runs/acnet-r18 --config.data.data_dir=/data/imagenet-ar
  (conv=plain: the base model; conv=acb_hor, acb_ver, acb_bn_after_sum: Table 4's ablations)

The paper's numbers (top-1 / top-5, base -> ACNet):
  Table 3: AlexNet 55.92 / 79.53 -> 57.44 / 80.73 (model=alexnet: the zoo's acnet_alexnet,
    TF-slim's alexnet_v2 with BN, its 11x11 and 5x5 ACBs with 1x3 / 3x1 branches); ResNet-18
    70.36 / 89.61 -> 71.14 / 89.96; DenseNet-121 75.15 / 92.45 -> 75.82 / 92.77.
  Table 4, ResNet-18 top-1 on the original / 90-degree rotated / 180-degree rotated / up-down
  flipped validation set: base 70.36 / 41.00 / 41.95 / 41.86; ver only (conv=acb_ver) 70.78 /
  41.61 / 42.47 / 42.66; hor only (conv=acb_hor) 70.70 / 42.06 / 43.22 / 43.05; ACNet 71.14 /
  42.20 / 42.89 / 43.10; BN after the sum (conv=acb_bn_after_sum) 70.82 / 41.70 / 42.92 / 42.90.
  AlexNet, the same columns: base 55.92 / 28.18 / 31.41 / 31.62; ver only 57.10 / 29.65 / 32.86 /
  33.02; hor only 57.25 / 29.97 / 33.74 / 33.74; ACNet 57.44 / 30.49 / 33.98 / 33.82; BN after
  the sum 56.18 / 28.81 / 32.12 / 32.33.
  `python -m train.analyze --workdir DIR` gives the rotated and flipped accuracies of an ACB run
  (on 5,000 validation images spread over the classes).

The paper's recipe: batch 256, 150 epochs, "bounding box distortion, left-right flipping and
color shift". Ours where it gives none: SGD with momentum 0.9 from learning rate 0.1, cosine
to 0 (ours), weight decay 1e-4 on the weights (ours), the Inception crop for the bounding box
distortion, no color shift (ours: not implemented), bfloat16 compute with float32 parameters;
AlexNet without slim's dropout (ours: the zoo's models hold no random state).
"""

from configs import common, imagenet

MODELS = {"resnet18": "resnet18", "densenet121": "densenet121", "alexnet": "acnet_alexnet"}
CONVS = {  # conv=... -> (the conv kind, its options): the base, ACNet, and Table 4's ablations
  "acb": ("acb", {}),
  "plain": ("plain", {}),
  "acb_hor": ("acb", {"asymmetric": "hor"}),
  "acb_ver": ("acb", {"asymmetric": "ver"}),
  "acb_bn_after_sum": ("acb", {"bn": "sum"}),
}


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg, {"model": tuple(MODELS), "conv": tuple(CONVS), "source": ("arrayrecord", "tfds")}
  )
  c = imagenet.get_config(f"source={a['source']}")
  c.model, (c.conv, options) = MODELS[a["model"]], CONVS[a["conv"]]
  for name, value in options.items():
    c.conv_options[name] = value
  c.num_epochs = 150.0
  c.optim.update(learning_rate=0.1, schedule="cosine", boundaries=(), weight_decay=1e-4)
  return c
