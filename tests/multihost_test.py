"""Multi-host training: two processes on localhost (jax.distributed, gloo on the CPU) train, save,
are killed, resume, and follow a one-process run on the same two devices."""

import json
import os
import signal
import socket
from pathlib import Path

import driver
import numpy as np
import pytest

from tests import jpeg_tree
from train.trainer import trained_run
from train.trainer.summary import Summary

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("multihost")

_OVERRIDES = {
  "data.train_size": 64,
  "data.test_size": 40,
  "batch_size": 16,
  "eval_batch_size": 16,
  "log_every_steps": 1,
  "progress": False,
  "num_steps": 8,
  "checkpoint_every_steps": 2,
  "conv": "rotate4",
}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
  """This environment without JAX's run settings (the session's compilation cache kept)."""
  kept = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_")
  env = {
    k: v
    for k, v in os.environ.items()
    if k != "XLA_FLAGS" and (not k.startswith("JAX_") or k.startswith(kept))
  }
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _launch(
  tmp_path: Path,
  workdir: Path,
  processes: int,
  kill_at: int = -1,
  devices: int = 1,
  overrides: dict | None = None,
  read_log: Path | None = None,
):
  """Starts the run's processes: `processes` of them, each with `devices` CPU devices (killed,
  with `kill_at`, once a checkpoint is on disk)."""
  overrides = {**_OVERRIDES, **(overrides or {}), "distributed": processes > 1}
  port = _free_port()
  procs = []
  for i in range(processes):
    env = _env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if read_log is not None:
      env["READ_LOG"] = f"{read_log}.{i}"
    if processes > 1:
      env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i),
      )
    procs.append(
      driver.start(tmp_path, workdir, overrides, kill_at=kill_at, after_checkpoint=True, env=env)
    )
  return procs


def _finish(procs, timeout: float = 300) -> list[tuple[int, str]]:
  return driver.finish(procs, timeout)


def _metrics(workdir: Path) -> list[dict]:
  return [
    {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]


def _summary(output: str) -> Summary:
  return Summary.from_json(driver.summary(output))


def test_two_processes_train_save_resume_after_kill_and_match_one_process(tmp_path):
  # the reference: one process with the same two devices
  ((code, out),) = _finish(_launch(tmp_path, tmp_path / "one", processes=1, devices=2))
  assert code == 0, out[-3000:]
  one = _summary(out)
  assert one.devices == 2

  # two processes, killed (-9, both) while preparing step 5: checkpoints at 2 and 4 are on disk
  killed = _finish(_launch(tmp_path, tmp_path / "two", processes=2, kill_at=5), timeout=120)
  assert killed[0][0] == -signal.SIGKILL, killed[0][1][-3000:]
  saved = sorted(
    int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert saved and max(saved) < 8, saved

  # both resume from it and finish
  done = _finish(_launch(tmp_path, tmp_path / "two", processes=2))
  for code, out in done:
    assert code == 0, out[-3000:]
  assert f"resumed from step {max(saved)}" in done[0][1]
  two = _summary(done[0][1])
  assert _summary(done[1][1]).test_loss == two.test_loss  # every process computes the same summary
  assert two.devices == 2 and two.steps == 8
  assert two.deployed_prediction_agreement == 1.0 and two.test_examples == 40

  # the same trajectory as one process: the same global batches, the same sharded step
  a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
  assert [m["step"] for m in a] == [m["step"] for m in b]
  for ma, mb in zip(a, b):
    for key in ma:
      np.testing.assert_allclose(mb[key], ma[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(two.test_loss, one.test_loss, rtol=1e-5)
  step_a, state_a = trained_run.load_state(tmp_path / "one")
  step_b, state_b = trained_run.load_state(tmp_path / "two")
  assert step_a == step_b == 8
  for x, y in zip(_leaves(state_a.params), _leaves(state_b.params)):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def _leaves(tree) -> list[np.ndarray]:
  import jax

  leaves = jax.tree.leaves(tree)
  assert len(leaves) > 5
  return [np.asarray(leaf) for leaf in leaves]


@pytest.mark.slow  # the shares of every batch: streaming_test.py, in one process
@jpeg_tree.needs_fashion_mnist
def test_two_processes_stream_disjoint_shares_of_a_prepared_folder(tmp_path):
  from train import prepare

  tree = jpeg_tree.make_tree(tmp_path / "tree", train_per_class=12, test_per_class=5)
  prepare.prepare(tree, tmp_path / "prepared", name="fm3", say=lambda m: 0)
  overrides = {
    "model": "cifar_quick",
    "model_kwargs": {"image_size": 32},
    "data.source": "arrayrecord",
    "data.data_dir": str(tmp_path / "prepared"),
    "data.name": "fm3",
    "data.augment": "inception",
    "data.image_size": 32,
    "num_steps": 6,
    "batch_size": 8,
    "eval_batch_size": 4,
    "conv": "acb",
  }
  ((code, out),) = _finish(
    _launch(tmp_path, tmp_path / "one", 1, devices=2, overrides=overrides, read_log=tmp_path / "r1")
  )
  assert code == 0, out[-3000:]
  done = _finish(
    _launch(tmp_path, tmp_path / "two", 2, overrides=overrides, read_log=tmp_path / "r2")
  )
  for code, out in done:
    assert code == 0, out[-3000:]
  two, one = _summary(done[0][1]), _summary(out)
  assert two.test_examples == one.test_examples == 15  # every test image once, on two hosts

  def reads(path):
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]

  host0, host1, single = (
    reads(tmp_path / "r2.0"),
    reads(tmp_path / "r2.1"),
    reads(tmp_path / "r1.0"),
  )
  assert len(host0) == len(host1) == len(single) // 2 == 6 * 4  # each reads its half, once
  assert not set(host0) & set(host1)  # disjoint shares of every batch
  assert sorted(host0 + host1) == sorted(single)  # whose union is the one-process run's batches
  epoch = [index for step, index in single if step < 39 // 8]  # 4 steps of the first epoch
  assert len(epoch) == len(set(epoch)) == 4 * 8  # no example twice in an epoch
  np.testing.assert_allclose(two.test_loss, one.test_loss, rtol=1e-4)
