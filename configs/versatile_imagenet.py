"""Versatile filters on ImageNet: every row of Table 4 of Wang et al. (2018), streamed at 224 px.

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar --name imagenet2012
  python -m train.main --config configs/versatile_imagenet.py:row=versatile_v2_resnet50 \\
      --workdir runs/vf-v2-r50 --config.data.data_dir=/data/imagenet-ar

Rows (row=...: the zoo model, conv=versatile unless plain), with the paper's weights, memory,
FLOPs and top-1 / top-5 error; tests/models_test.py checks the first three against the zoo:
  alexnet                  6.1e7  232.5 MB  0.7e9  42.9 / 19.8  (the baseline, conv=plain)
  versatile_alexnet        3.5e7  131.8 MB  0.4e9  42.1 / 19.5
  versatile_v2_alexnet     1.9e7   73.7 MB  0.4e9  44.1 / 20.7
  resnet50                 2.6e7   97.2 MB  4.1e9  24.7 /  7.8  (the baseline, conv=plain)
  versatile_resnet50       1.9e7   75.6 MB  3.2e9  24.5 /  7.6
  versatile_v2_resnet50    1.1e7   41.7 MB  3.0e9  25.5 /  8.2
  resnext50                2.5e7   95.3 MB  4.2e9  22.6 /  6.5  (resnext50_32x4d, conv=plain)
  versatile_v2_resnext50   1.3e7   50.0 MB  4.0e9  23.8 /  7.0

The paper: "all training settings such as weight decay and learning rate used the default
setting" of each baseline, and no more. Ours, those defaults as their reference codes give them:
  AlexNet rows: Caffe's bvlc_alexnet solver, SGD with momentum 0.9 from 0.01, divided by 10
    every 20 epochs (its 100,000 iterations of 256), 90 epochs (450,000), weight decay 5e-4
    (here on the weights, not BN); the zoo's AlexNet has BN after each conv (ours) and no
    dropout (ours).
  ResNet-50 and ResNeXt-50 rows: torchvision's reference, 0.1 divided by 10 at epochs 30 and
    60, 90 epochs, weight decay 1e-4.
  All: batch 256, the Inception crop and flip at 224 px, the centre crop of the 256 px resize
  for evaluation, bfloat16 compute with float32 parameters (configs/imagenet.py).
"""

from configs import common, imagenet

ROWS = {  # row -> (zoo model, conv kind)
  "versatile_alexnet": ("versatile_alexnet", "versatile"),
  "versatile_v2_alexnet": ("versatile_v2_alexnet", "versatile"),
  "alexnet": ("alexnet", "plain"),
  "versatile_resnet50": ("versatile_resnet50", "versatile"),
  "versatile_v2_resnet50": ("versatile_v2_resnet50", "versatile"),
  "resnet50": ("resnet50", "plain"),
  "versatile_v2_resnext50": ("versatile_v2_resnext50", "versatile"),
  "resnext50": ("resnext50_32x4d", "plain"),
}


def get_config(arg: str | None = None):
  a = common.parse_arg(arg, {"row": tuple(ROWS), "source": ("arrayrecord", "tfds")})
  c = imagenet.get_config(f"source={a['source']}")
  c.model, c.conv = ROWS[a["row"]]
  if "alexnet" in c.model:
    c.optim.update(learning_rate=0.01, boundaries=(20.0, 40.0, 60.0, 80.0), weight_decay=5e-4)
  return c
