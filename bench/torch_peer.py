"""The peer a user would compare with: CIFAR ResNets' train step written plainly in PyTorch, on our
device.

The same networks as `kshapes_jax.models.resnet20` / `resnet56` (3 stages of n
basic blocks, 16/32/64 channels, option-A shortcuts: stride-2 subsampling and
zero channels), the same batch, SGD with Nesterov momentum and weight decay,
cross-entropy. The ACB variant is written by us from the ACNet paper (section
3.2, Fig. 3): every 3x3 conv + BN becomes three branches, 3x3 / 1x3 / 3x1,
each with its own BN, summed; it is what a PyTorch user would train (the
official ACBlock does the same). On a GPU it runs in fp32 with cuDNN's
benchmark mode and TF32 off, as ours (float32, precision pinned by the layers'
default).

torch is optional: the bench extra (`pip install -e ".[train,bench]"`, torch 2.14.1, whose
build runs on CPU and CUDA alike).
"""

from __future__ import annotations

import statistics
import time

PEER_CASES = (("resnet20", "plain"), ("resnet56", "plain"), ("resnet56", "acb"))


def _build(torch, depth: int, acb: bool, classes: int = 10):
  nn, F = torch.nn, torch.nn.functional

  class ConvBN(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
      return self.bn(self.conv(x))

  class ACBlock(nn.Module):
    """kxk + 1xk + kx1, BN per branch, summed (ACNet eq. 6 before fusion)."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.square = ConvBN(cin, cout, stride)
      self.hor = nn.Conv2d(cin, cout, (1, 3), stride, (0, 1), bias=False)
      self.hor_bn = nn.BatchNorm2d(cout)
      self.ver = nn.Conv2d(cin, cout, (3, 1), stride, (1, 0), bias=False)
      self.ver_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
      return self.square(x) + self.hor_bn(self.hor(x)) + self.ver_bn(self.ver(x))

  unit = ACBlock if acb else ConvBN

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.one, self.two = unit(cin, cout, stride), unit(cout, cout, 1)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = self.two(F.relu(self.one(x)))
      s = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
      if self.extra:
        s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + s)

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      n = (depth - 2) // 6
      self.stem = unit(3, 16, 1)
      blocks, cin = [], 16
      for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
          blocks.append(Block(cin, width, stride if i == 0 else 1))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, classes)

    def forward(self, x):
      x = self.blocks(F.relu(self.stem(x)))
      return self.fc(x.mean(dim=(2, 3)))

  return ResNet()


def bench_torch(
  model: str, case: str, batch: int, reps: int, device: str = "cpu", threads: int | None = None
) -> dict | None:
  """Median train-step and eval times of the PyTorch ResNet; None if torch (or its device) is
  missing."""
  try:
    import torch
  except ImportError:
    return None
  if device == "cuda" and not torch.cuda.is_available():
    return None
  if threads:
    torch.set_num_threads(threads)
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  torch.manual_seed(0)
  net = _build(torch, int(model.removeprefix("resnet")), case == "acb").to(device)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
  x = torch.randn(batch, 3, 32, 32, device=device)
  y = torch.randint(0, 10, (batch,), device=device)

  def train_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()  # waits for the device, as our timing does

  def eval_step():
    with torch.no_grad():
      return net(x).argmax(-1).sum().item()

  result = {
    "model": model,
    "case": case,
    "torch_version": torch.__version__,
    "device": device,
    "threads": torch.get_num_threads(),
    "parameters": sum(p.numel() for p in net.parameters()),
  }
  for name, fn in (("train", train_step), ("eval", eval_step)):
    net.train(name == "train")
    for _ in range(3):
      fn()
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    result[f"{name}_ms"] = 1e3 * statistics.median(times)
  return result


def bench_peers(
  models: list[dict], batch: int, reps: int, device: str = "cpu", log=print
) -> list[dict] | None:
  """The PEER_CASES in PyTorch, each with the ratio of ours (a row of `models` with its group and
  case) to it."""
  rows = []
  for model, case in PEER_CASES:
    peer = bench_torch(model, case, batch, reps, device)
    if peer is None:
      return None
    ours = next((r for r in models if r["group"] == model and r["case"] == case), None)
    if ours is not None:
      peer["ours_over_theirs_train"] = ours["train_ms"] / peer["train_ms"]
      peer["ours_over_theirs_eval"] = ours["eval_ms"] / peer["eval_ms"]
    rows.append(peer)
    log(
      f"  torch {model:<9} {case:<6} train {peer['train_ms']:8.1f} ms  eval {peer['eval_ms']:7.1f} "
      "ms",
      flush=True,
    )
  plain = {r["model"]: r for r in rows if r["case"] == "plain"}
  for r in rows:
    r["train_ratio"] = r["train_ms"] / plain[r["model"]]["train_ms"]
  return rows
