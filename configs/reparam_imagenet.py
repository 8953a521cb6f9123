"""Re-parameterized nets on ImageNet, streamed at 224 px: RepVGG-A0/A1/B0 (Ding et al., CVPR 2021,
Table 4) and DBB's ResNet-18 (Ding et al., CVPR 2021), offline (a BN per branch, the papers) or
online (OREPA, Hu et al., CVPR 2022: branch scales, one conv, one BN).

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar --name imagenet2012
  python -m train.main --config configs/reparam_imagenet.py:model=repvgg_a0 \\
      --workdir runs/repvgg-a0 --config.data.data_dir=/data/imagenet-ar
  python -m train.main --config configs/reparam_imagenet.py:model=resnet18,conv=dbb_online \\
      --workdir runs/r18-dbb-online --config.data.data_dir=/data/imagenet-ar

conv: each model's own block by default (`own`: repvgg for RepVGG, dbb for ResNet-18), plain
the base model (RepVGG's "VGG" of 3x3 conv-BN-ReLU, the plain ResNet-18), acb, dbb or repvgg
any block; `_online` trains it online; repvgg_qa is QARepVGG's quantization-friendly block
(Chu et al. 2023: `conv_options.bn="qa"`), for INT8 (`python -m train.export --int8`).

The papers' numbers (top-1): RepVGG Table 4, 120 epochs: RepVGG-A0 72.41, A1 74.46, B0 75.14
(8.30M / 12.78M / 14.33M parameters deployed; the zoo's models have the official training-
and deployed-form counts exactly). DBB's released ResNet-18 (ResNet-18_DBB_7101, its README)
reads 71.01. With INT8 post-training quantization RepVGG-A0 falls to about 52.2 and
QARepVGG-A0 keeps 70.4, within 2 points of its float32 top-1 (the QARepVGG paper). OREPA
(ResNet-18, 4x V100, batch 256): DBB trains at 2.80x the plain net's time
and 1.79x its memory, OREPA at 1.40x and 1.24x, with equal or better accuracy.

The recipe, as the official codes train (RepVGG's README, DBB's train.py): batch 256, 120
epochs, SGD with momentum 0.9 from learning rate 0.1, cosine to 0, weight decay 1e-4 (here on
the weights only: BN shifts and scales and the online branch scales are not decayed, where
RepVGG decays its identity BN's scale), the Inception crop and flip at 224 px (torchvision's
example, which both use); bfloat16 compute with float32 parameters.
"""

from configs import common, imagenet

MODELS = ("repvgg_a0", "repvgg_a1", "repvgg_b0", "resnet18")
BLOCKS = ("own", "acb", "dbb", "repvgg")
CONVS = (*BLOCKS, "plain", *(f"{b}_online" for b in BLOCKS), "repvgg_qa")


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, {"model": MODELS, "conv": CONVS, "source": ("arrayrecord", "tfds")})
  c = imagenet.get_config(f"source={a['source']}")
  c.model = a["model"]
  block, online = a["conv"].removesuffix("_online"), a["conv"].endswith("_online")
  own = "dbb" if a["model"] == "resnet18" else "repvgg"
  c.conv = own if block == "own" else block
  if online:
    c.conv_options.online = True
  if block == "repvgg_qa":
    c.conv, c.conv_options.bn = "repvgg", "qa"
  c.num_epochs = 120.0
  c.optim.update(learning_rate=0.1, schedule="cosine", boundaries=(), weight_decay=1e-4)
  return c
