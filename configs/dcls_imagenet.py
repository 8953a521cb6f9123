"""ConvNeXt-T/S/B on ImageNet, streamed at 224 px, with their depthwise 7x7 convs plain (Liu et
al., CVPR 2022) or DCLS (Khalfaoui-Hassani et al., ICLR 2023: ConvNeXt-dcls).

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar --name imagenet2012
  python -m train.main --config configs/dcls_imagenet.py:model=convnext_t,conv=dcls \\
      --workdir runs/convnext-t-dcls --config.data.data_dir=/data/imagenet-ar

conv: plain (ConvNeXt), dcls (bilinear, the paper's ImageNet models; 34 elements per channel
for -T, 40 for -S and -B, in a 17 x 17 window, one position set a stage) or dcls_gauss (the
Gaussian interpolation of the 2023 follow-up, at the same counts).

ImageNet-1k top-1 (ConvNeXt-dcls README, 224 px): ConvNeXt-T 82.1 -> 82.5 with DCLS, -S 83.1
-> 83.7, -B 83.8 -> 84.1; the zoo's models have the official parameter counts, plain and DCLS.

The recipe, as ConvNeXt-dcls trains (TRAINING.md, engine.py, optim_factory.py): batch 4096,
300 epochs, AdamW (0.9, 0.999) from 4e-3 after a 20-epoch linear warm-up, cosine to 0, weight
decay 0.05 on the weights only (here the layer scales decay too: they are weights), stochastic
depth 0.1 / 0.4 / 0.5 (T / S / B), the DCLS positions at 5 x the learning rate, not decayed and
clamped into their window after every step, and the square of the repulsion loss added from
epoch 21 (its `epoch > 20`). Not here: RandAugment, mixup / cutmix, random erasing, label
smoothing and the EMA of the weights (the trainer has none of them; the paper's numbers are
with them); the Inception crop and flip at 224 px and bfloat16 compute with
float32 parameters are the trainer's.
"""

from configs import common, imagenet

MODELS = ("convnext_t", "convnext_s", "convnext_b")
DROP_PATH = {"convnext_t": 0.1, "convnext_s": 0.4, "convnext_b": 0.5}


def get_config(arg: str | None = None):
  a = common.parse_arg(
    arg,
    {
      "model": MODELS,
      "conv": ("dcls", "dcls_gauss", "plain"),
      "source": ("arrayrecord", "tfds"),
    },
  )
  c = imagenet.get_config(f"source={a['source']}")
  c.model = a["model"]
  c.conv = "plain" if a["conv"] == "plain" else "dcls"
  if a["conv"] == "dcls_gauss":
    c.conv_options.interpolation = "gauss"
  c.model_kwargs = {"drop_path_rate": DROP_PATH[a["model"]]}
  c.batch_size = 4096
  c.num_epochs = 300.0
  c.optim.update(
    name="adamw",
    learning_rate=4e-3,
    schedule="cosine",
    boundaries=(),
    warmup_epochs=20.0,
    weight_decay=0.05,
    lr_multipliers={"positions": 0.01, "dcls_positions": 5.0, "dcls_sigmas": 5.0},
  )
  c.dcls_repulsion_from_epoch = 21.0
  return c
