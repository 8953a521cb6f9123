"""The peer a user would compare with: ResNet-20's train step written plainly in PyTorch (CPU).

Same network as `kshapes_jax.models.resnet20` (3 stages of 3 basic blocks, 16/32/64
channels, option-A shortcuts: stride-2 subsampling and zero channels), same
batch, SGD with Nesterov momentum and weight decay, cross-entropy. torch is
optional: `pip install torch==2.13.0` (the CPU build on these machines' disk).
"""

from __future__ import annotations

import statistics
import time


def _build(torch):
  nn, F = torch.nn, torch.nn.functional

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if self.extra:
        s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + s)

  class ResNet20(nn.Module):
    def __init__(self, classes=10):
      super().__init__()
      self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      self.bn = nn.BatchNorm2d(16)
      blocks, cin = [], 16
      for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
          blocks.append(Block(cin, width, stride if i == 0 else 1))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, classes)

    def forward(self, x):
      x = F.relu(self.bn(self.stem(x)))
      x = self.blocks(x)
      return self.fc(x.mean(dim=(2, 3)))

  return ResNet20()


def bench_torch_resnet20(batch: int, reps: int, threads: int | None = None) -> dict | None:
  """Median train-step and eval times of the PyTorch ResNet-20; None if torch is not installed."""
  try:
    import torch
  except ImportError:
    return None
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = _build(torch)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()

  def eval_step():
    with torch.no_grad():
      return model(x).argmax(-1).sum().item()

  result = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "parameters":
            sum(p.numel() for p in model.parameters())}
  for name, fn in (("train", train_step), ("eval", eval_step)):
    model.train(name == "train")
    for _ in range(2):
      fn()
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    result[f"{name}_ms"] = 1e3 * statistics.median(times)
  return result
