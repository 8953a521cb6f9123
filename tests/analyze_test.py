"""train.analyze and train.report on tiny real runs (synthetic data): files, numbers that must agree, the CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import repro_fmnist
from kshapes_jax.analysis import acb
from train import analyses, analyze, report, train
from train.evaluation import accuracy
from train.rundir import RunDir
from train.trained_run import load_run

# one xdist worker trains the module's runs once (pytest runs with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("analyze_runs")
REPO = Path(__file__).resolve().parents[1]
ROWS = ("sn_v4", "lenet_model3", "acu", "acb", "acb_baseline")


def _config(row: str, seed: int = 0):
  c = repro_fmnist.get_config(f"row={row},seed={seed}")
  c.data.update(source="synthetic", data_dir="", train_size=96, test_size=64)
  c.update(batch_size=16, eval_batch_size=32, num_steps=6, checkpoint_every_steps=2, log_every_steps=2)
  c.optim.position_warmup_steps = 2
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """RUNS/ROW/seed0 for a few rows of the suite, 6 steps each; sn_v4 also at seed 1."""
  root = tmp_path_factory.mktemp("runs")
  for row in ROWS:
    train.train_and_evaluate(_config(row), root / row / "seed0")
  train.train_and_evaluate(_config("sn_v4", 1), root / "sn_v4" / "seed1")
  return root


def _is_png(path: Path) -> bool:
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_load_run_restores_the_trained_model(runs):
  run = load_run(runs / "acb" / "seed0")
  assert run.step == 6 and run.steps == [2, 4, 6]
  summary = json.loads((runs / "acb" / "seed0" / "summary.json").read_text())
  # the restored model (eval mode, fused ACBs) scores what the trainer reported
  assert accuracy(run.model, run.dataset, run.dataset.test, 32) == summary["test_accuracy"]
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 5"):
    load_run(runs / "acb" / "seed0", step=5)
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_run(runs)


def test_rotate_section(runs):
  results = analyze.analyze(runs / "sn_v4" / "seed0")
  out = runs / "sn_v4" / "seed0" / "analysis"
  assert results["sections"] == ["rotate"]
  assert list(results["rotate"]) == ["convs/0", "convs/1", "convs/2", "convs/3"]
  assert sum(results["rotate"]["convs/1"]["histogram_45deg"]) == 20 * 50
  assert all(v["turned_mean_deg"] >= 0 for v in results["rotate"].values())
  assert _is_png(out / "rotate_histograms.png") and _is_png(out / "rotate_fig5.png")
  assert "![fig5](rotate_fig5.png)" in (out / "report.md").read_text()


def test_acu_section_follows_the_positions_through_the_checkpoints(runs):
  results = analyze.analyze(runs / "acu" / "seed0")
  assert results["sections"] == ["active"] and results["active"]["checkpoint_steps"] == [0, 2, 4, 6]
  steps, traj = analyses.active.position_trajectories(load_run(runs / "acu" / "seed0"))
  assert steps == [0, 2, 4, 6] and len(traj) == 6
  first = next(iter(traj.values()))
  assert first.shape == (4, 9, 2)
  moved = np.linalg.norm(first - first[0], axis=-1)
  assert np.all(moved[1] == 0)  # frozen for the 2 warm-up steps
  assert moved[-1].max() > 0 and np.all(moved[:, 0] == 0)  # then they move; synapse 0 never does
  assert _is_png(runs / "acu" / "seed0" / "analysis" / "acu_positions.png")
  assert _is_png(runs / "acu" / "seed0" / "analysis" / "acu_movement.png")


def test_acnet_section_numbers_agree_with_the_trainer(runs):
  workdir = runs / "acb" / "seed0"
  results = analyze.analyze(workdir, prune_examples=40, prune_seeds=2)["acb"]
  summary = json.loads((workdir / "summary.json").read_text())
  assert results["distorted"]["original"] == summary["deployed_test_accuracy"]
  a = np.asarray(results["magnitude_matrix"])
  assert a.shape == (5, 5) and a.max() <= 1.0 and a.min() > 0
  # sparsity 0 is the unpruned net on the same 40 images, for every region and mask
  run = load_run(workdir)
  unpruned = accuracy(run.model, run.dataset, analyses.acb.subset(run.dataset.test, 40), 32)
  for region, curve in results["pruning"].items():
    curve = np.asarray(curve, np.float64)
    assert curve.shape == (2, len(analyses.acb.SPARSITIES))
    np.testing.assert_array_equal(curve[:, 0], unpruned)
    held = np.asarray(analyses.acb.SPARSITIES) <= acb.region_mask(5, region).mean()
    assert np.all(np.isnan(curve[:, ~held])) and not np.any(np.isnan(curve[:, held]))
  assert _is_png(workdir / "analysis" / "acnet_pruning.png")
  # a plain baseline asks for the section explicitly (by its former name too)
  assert analyze.analyze(runs / "acb_baseline" / "seed0", sections=["acnet"], prune_seeds=0)["acb"]["pruning"] == {}
  with pytest.raises(ValueError, match="unknown analysis 'fig7'"):
    analyze.analyze(workdir, sections=["acb", "fig7"])


def test_versatile_section(runs):
  results = analyze.analyze(runs / "lenet_model3" / "seed0")
  assert results["sections"] == ["versatile"]
  total = results["versatile"][-1]
  assert total["layer"] == "total" and total["weights"] == 218_100  # Table 2: 2.2e5
  assert _is_png(runs / "lenet_model3" / "seed0" / "analysis" / "versatile_filters.png")


def test_cli_writes_the_report_and_refuses_bad_sections(runs, tmp_path):
  out = tmp_path / "a"
  ok = subprocess.run([sys.executable, "-m", "train.analyze", f"--workdir={runs / 'sn_v4' / 'seed1'}",
                       f"--out={out}"], cwd=REPO, capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert (out / "report.md").exists() and "wrote" in ok.stdout
  bad = subprocess.run([sys.executable, "-m", "train.analyze", f"--workdir={runs / 'sn_v4' / 'seed1'}",
                        "--sections=acu"], cwd=REPO, capture_output=True, text=True)
  assert bad.returncode != 0 and "no ActiveConv layers" in bad.stderr


def test_verdict_sentences():
  assert "too few seeds" in report.verdict([1.0], [2.0], 0.5)
  assert "same direction" in report.verdict([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], 0.5)
  assert "OPPOSITE" in report.verdict([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], 0.5)
  assert "not resolved" in report.verdict([1.0, 2.0, 3.0], [1.5, 2.5, 1.0], 0.5)
  assert "(a tie): ours resolved, worse" in report.verdict([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], 0.02)
  assert report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))


def test_report_reads_the_runs_and_keeps_the_notes(runs, tmp_path):
  suite = tmp_path / "runs"
  shutil.copytree(runs, suite)
  (suite / "acb_hor" / "seed0").mkdir(parents=True)
  (suite / "acb_hor" / "seed0" / "FAILED").write_text("exit status 3\n")
  path = tmp_path / "results" / "REPRODUCTION.md"
  text = report.write_report(suite, path)
  accs = [100 * json.loads((suite / "sn_v4" / s / "summary.json").read_text())["deployed_test_accuracy"]
          for s in ("seed0", "seed1")]
  mean, std = report.mean_std(accs)
  assert f"| `sn_v4` | 24,760 | 54,860 | {mean:.2f} +- {std:.2f} | 2 |" in text
  assert "| `acb_hor` | - | - | - | 0 (1 diverged) |" in text
  for name in ("rotate_fig5_sn_v4.png", "acu_positions.png", "acnet_pruning_acb.png", "versatile_fig3.png"):
    assert _is_png(path.parent / "repro" / name) and f"repro/{name}" in text
  path.write_text(text.replace(report.NOTES[0], report.NOTES[0] + "\nWhat it means.\n"))
  again = report.write_report(suite, path)
  assert "\nWhat it means.\n" + report.NOTES[1] in again


def test_reproduce_commands_and_the_busy_check(tmp_path):
  from train import reproduce

  cmd = reproduce.run_command("acb_hor", 2, "runs/repro")
  assert cmd[1:] == ["-m", "train.main", "--config=configs/repro_fmnist.py:row=acb_hor,seed=2",
                     "--workdir=runs/repro/acb_hor/seed2"]
  workdir = tmp_path / "row" / "seed0"
  workdir.mkdir(parents=True)
  assert RunDir(workdir).holder() is None
  holds = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
           "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1 on h'); print('held', flush=True); time.sleep(60)")
  busy = subprocess.Popen([sys.executable, "-c", holds, str(workdir / "LOCK")], stdout=subprocess.PIPE, text=True)
  try:
    assert busy.stdout.readline().strip() == "held"
    assert RunDir(workdir).holder() == "pid 1 on h"
    assert RunDir(tmp_path / "row" / "seed1").holder() is None and RunDir(tmp_path / "row" / "seed").holder() is None
  finally:
    busy.kill()
    busy.wait()
  assert RunDir(workdir).holder() is None  # the holder died: its lock is stale, not held


def test_report_of_one_family_and_the_sector_count(runs, tmp_path):
  path = tmp_path / "rotate.md"
  text = report.write_report(runs, path, methods=("rotate",))
  assert "## RotateConv" in text and "## ACNet" not in text and "## Versatile" not in text
  assert "angles that changed sector (%)" in text
  changed = analyze.analyze(runs / "sn_v4" / "seed0", out=tmp_path / "a")["rotate"]["convs/1"]["changed_sector"]
  assert 0.0 <= changed <= 1.0
  with pytest.raises(ValueError, match="unknown methods"):
    report.write_report(runs, path, methods=("acnet",))
