"""The one driver of training runs in their own processes (kill -9, several processes or devices):
a script that trains a config, optionally killed with SIGKILL while the loader reads a step, and
prints its summary.

  proc = driver.start(tmp_path, workdir, {"num_steps": 8}, kill_at=5)
  status, output = driver.finish([proc])[0]

and `command`, the training command itself in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import importlib, json, os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from train import trainer
    from train.data import memory, streamed

    def _wait_for_a_checkpoint(workdir):
      # the saves are asynchronous: wait (at most 60 s) for one to be committed
      saved = os.path.join(workdir, "checkpoints")
      for _ in range(600):
        if os.path.isdir(saved) and any(name.isdigit() for name in os.listdir(saved)):
          return
        time.sleep(0.1)

    if __name__ == "__main__":  # grain's worker processes import this file again
      workdir, args = sys.argv[1], json.loads(sys.argv[2])
      config = importlib.import_module(args["config"]).get_config(args["config_arg"])
      config.update_from_flattened_dict(args["overrides"])
      kill_at = args["kill_at"]
      if kill_at >= 0:  # kill -9 while the loader reads that step's batch
        batch, example = memory.MemorySplit.batch, streamed.StreamSplit.train_example
        def _kill(step):
          if step == kill_at:
            if args["after_checkpoint"]:
              _wait_for_a_checkpoint(workdir)
            os.kill(os.getpid(), signal.SIGKILL)
        def killing_batch(self, plan, step):
          _kill(step)
          return batch(self, plan, step)
        def killing_example(self, plan, position):
          _kill(position // plan.local)
          return example(self, plan, position)
        memory.MemorySplit.batch = killing_batch
        streamed.StreamSplit.train_example = killing_example
      if os.environ.get("READ_LOG"):  # which training examples this process reads, by step
        example = streamed.StreamSplit.train_example
        def logged(self, plan, position):
          step, row = divmod(position, plan.local)
          with open(os.environ["READ_LOG"], "a") as f:
            f.write(f"{{step}} {{plan.rows(step)[row]}}\\n")
          return example(self, plan, position)
        streamed.StreamSplit.train_example = logged
      summary = trainer.train_and_evaluate(config, workdir)
      print("SUMMARY " + json.dumps(summary.to_json()), flush=True)
""")


def command(
  workdir: Path, *flags: str, config: str = "configs/default.py", stdout: Path | None = None
) -> subprocess.Popen:
  """`python -m train.main --config CONFIG --workdir WORKDIR FLAGS`: the real command, in its own
  process, its stderr piped and its stdout too, or written to the file `stdout` (for a run that
  goes on while nobody reads it: it prints a line an epoch, and a full pipe would stop it)."""
  with contextlib.ExitStack() as files:
    out = files.enter_context(open(stdout, "w")) if stdout is not None else subprocess.PIPE
    return subprocess.Popen(
      [
        sys.executable,
        "-m",
        "train.main",
        "--config",
        str(REPO / config),
        "--workdir",
        str(workdir),
      ]
      + list(flags),
      cwd=REPO,
      stdout=out,
      stderr=subprocess.PIPE,
      text=True,
    )


def environment(devices: int = 1, **extra: str) -> dict[str, str]:
  """This process's environment, with `devices` CPU devices (on a GPU machine a run would
  otherwise see its one GPU) and `extra` variables."""
  env = dict(os.environ, **extra)
  if devices > 1:
    flags = env.get("XLA_FLAGS", "")
    env.update(
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
    )
  return env


def start(
  tmp_path: Path,
  workdir: Path,
  overrides: dict,
  *,
  config: str = "configs.default",
  config_arg: str | None = None,
  kill_at: int = -1,
  after_checkpoint: bool = False,
  env: dict[str, str] | None = None,
) -> subprocess.Popen:
  """Starts training `config` (a module name) with flat `overrides` into `workdir`, in its own
  process (and process group); with `kill_at` >= 0 it is killed with SIGKILL when the loader
  reads that step's batch (`after_checkpoint`: once a checkpoint is on disk)."""
  script = tmp_path / "driver.py"
  script.write_text(_SCRIPT.format(repo=str(REPO)))
  args = dict(
    config=config,
    config_arg=config_arg,
    overrides=overrides,
    kill_at=kill_at,
    after_checkpoint=after_checkpoint,
  )
  return subprocess.Popen(
    [sys.executable, str(script), str(workdir), json.dumps(args)],
    env=env if env is not None else environment(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
  """(exit status, output) of each; one left running `timeout` s after the first ended is
  killed."""
  deadline, out = time.monotonic() + timeout, []
  for p in procs:
    try:
      text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)
      text, _ = p.communicate()
    out.append((p.returncode, text))
  return out


def run(tmp_path: Path, workdir: Path, overrides: dict, **kwargs) -> tuple[int, str]:
  """`start` one run and `finish` it."""
  return finish([start(tmp_path, workdir, overrides, **kwargs)])[0]


def summary(output: str) -> dict:
  """The summary a finished driver printed."""
  line = next(x for x in output.splitlines() if x.startswith("SUMMARY "))
  return json.loads(line.removeprefix("SUMMARY "))
