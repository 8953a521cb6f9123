"""train.analyze and train.reproduce.report on tiny real runs (synthetic data): files, numbers that
must agree, the CLI."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import repro_fmnist
from kshapes_jax.analysis import acb
from train import analyze, trainer
from train.analyze.common import KEPT, fmt, mean_std
from train.reproduce import layout, report, rows
from train.reproduce.ledger import Sample
from train.reproduce.suite import Suite
from train.trainer.evaluation import accuracy
from train.trainer.rundir import RunDir
from train.trainer.summary import Summary
from train.trainer.trained_run import load_run

# one xdist worker trains the module's runs once (pytest runs with --dist loadgroup); per session,
# since a module fixture is built again each time the worker comes back to this module
pytestmark = pytest.mark.xdist_group("analyze_runs")
REPO = Path(__file__).resolve().parents[1]
ROWS = ("sn_v4", "lenet_model3", "acu", "acb", "acb_baseline")


def _config(row: str, seed: int = 0):
  c = repro_fmnist.get_config(f"row={row},seed={seed}")
  c.data.update(source="synthetic", data_dir="", train_size=96, test_size=64)
  c.update(
    batch_size=16, eval_batch_size=32, num_steps=6, checkpoint_every_steps=2, log_every_steps=2
  )
  c.optim.position_warmup_steps = 2
  return c


def _wd(runs: Path, row: str, seed: str) -> Path:
  """RUNS/eN/ROW/seedS at the row's default length."""
  return Suite(runs).workdir(row, seed)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  """RUNS/eN/ROW/seed0 for a few rows of the suite, 6 steps each; sn_v4 also at seed 1."""
  root = tmp_path_factory.mktemp("runs")
  for row in ROWS:
    trainer.train_and_evaluate(_config(row), _wd(root, row, "seed0"))
  trainer.train_and_evaluate(_config("sn_v4", 1), _wd(root, "sn_v4", "seed1"))
  return root


def _is_png(path: Path) -> bool:
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_load_run_restores_the_trained_model(runs):
  run = load_run(_wd(runs, "acb", "seed0"))
  assert run.step == 6 and run.steps == [2, 4, 6]
  summary = RunDir(_wd(runs, "acb", "seed0")).read_summary()
  # the restored model (eval mode, fused ACBs) scores what the trainer reported
  assert accuracy(run.model, run.dataset, run.dataset.test, 32) == summary.test_accuracy
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 5"):
    load_run(_wd(runs, "acb", "seed0"), step=5)
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_run(runs)


def test_rotate_section(runs):
  results = analyze.analyze(_wd(runs, "sn_v4", "seed0"))
  out = _wd(runs, "sn_v4", "seed0") / "analysis"
  assert results["sections"] == ["rotate"]
  assert list(results["rotate"]) == ["convs/0", "convs/1", "convs/2", "convs/3"]
  assert sum(results["rotate"]["convs/1"]["histogram_45deg"]) == 20 * 50
  assert all(v["turned_mean_deg"] >= 0 for v in results["rotate"].values())
  assert _is_png(out / "rotate_histograms.png") and _is_png(out / "rotate_fig5.png")
  assert "![fig5](rotate_fig5.png)" in (out / "report.md").read_text()


def test_acu_section_follows_the_positions_through_the_checkpoints(runs):
  results = analyze.analyze(_wd(runs, "acu", "seed0"))
  assert results["sections"] == ["active"] and results["active"]["checkpoint_steps"] == [0, 2, 4, 6]
  steps, traj = analyze.active.position_trajectories(load_run(_wd(runs, "acu", "seed0")))
  assert steps == [0, 2, 4, 6] and len(traj) == 6
  first = next(iter(traj.values()))
  assert first.shape == (4, 9, 2)
  moved = np.linalg.norm(first - first[0], axis=-1)
  assert np.all(moved[1] == 0)  # frozen for the 2 warm-up steps
  assert moved[-1].max() > 0 and np.all(moved[:, 0] == 0)  # then they move; synapse 0 never does
  assert _is_png(_wd(runs, "acu", "seed0") / "analysis" / "acu_positions.png")
  assert _is_png(_wd(runs, "acu", "seed0") / "analysis" / "acu_movement.png")


def test_acnet_section_numbers_agree_with_the_trainer(runs):
  workdir = _wd(runs, "acb", "seed0")
  results = analyze.analyze(workdir, prune_examples=40, prune_seeds=2)["acb"]
  summary = RunDir(workdir).read_summary()
  assert results["distorted"]["original"] == summary.deployed_test_accuracy
  a = np.asarray(results["magnitude_matrix"])
  assert a.shape == (5, 5) and a.max() <= 1.0 and a.min() > 0
  # sparsity 0 is the unpruned net on the same 40 images, for every region and mask
  run = load_run(workdir)
  unpruned = accuracy(run.model, run.dataset, analyze.acb.subset(run.dataset.test, 40), 32)
  for region, curve in results["pruning"].items():
    curve = np.asarray(curve, np.float64)
    assert curve.shape == (2, len(analyze.acb.SPARSITIES))
    np.testing.assert_array_equal(curve[:, 0], unpruned)
    held = np.asarray(analyze.acb.SPARSITIES) <= acb.region_mask(5, region).mean()
    assert np.all(np.isnan(curve[:, ~held])) and not np.any(np.isnan(curve[:, held]))
  assert _is_png(workdir / "analysis" / "acnet_pruning.png")
  # a plain baseline asks for the section explicitly (by its former name too)
  assert (
    analyze.analyze(_wd(runs, "acb_baseline", "seed0"), sections=["acb"], prune_seeds=0)["acb"][
      "pruning"
    ]
    == {}
  )
  with pytest.raises(ValueError, match="unknown analysis 'fig7'"):
    analyze.analyze(workdir, sections=["acb", "fig7"])


def test_versatile_section(runs):
  results = analyze.analyze(_wd(runs, "lenet_model3", "seed0"))
  assert results["sections"] == ["versatile"]
  total = results["versatile"][-1]
  assert total["layer"] == "total" and total["weights"] == 218_100  # Table 2: 2.2e5
  assert _is_png(_wd(runs, "lenet_model3", "seed0") / "analysis" / "versatile_filters.png")


def test_cli_writes_the_report_and_refuses_bad_sections(runs, tmp_path):
  out = tmp_path / "a"
  ok = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.analyze",
      f"--workdir={_wd(runs, 'sn_v4', 'seed1')}",
      f"--out={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert ok.returncode == 0, ok.stderr
  assert (out / "report.md").exists() and "wrote" in ok.stdout
  bad = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.analyze",
      f"--workdir={_wd(runs, 'sn_v4', 'seed1')}",
      "--sections=active",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert bad.returncode != 0 and "no ActiveConv layers" in bad.stderr


def test_verdict_sentences():
  assert "too few seeds" in report.verdict([1.0], [2.0], 0.5)
  assert "CONFIRMED, same direction (ours larger)" in report.verdict(
    [2.0, 2.1, 2.2], [1.0, 1.1, 1.2], 0.5
  )
  assert "(size agrees)" in report.verdict([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], 0.95)
  assert "CONTRADICTED, the opposite direction" in report.verdict(
    [1.0, 1.1, 1.2], [2.0, 2.1, 2.2], 0.5
  )
  assert "not resolved; ~" in report.verdict([1.0, 2.0, 3.0], [1.5, 2.5, 1.0], 0.5)
  assert "(a tie: within +-0.25): CONTRADICTED, ours worse" in report.verdict(
    [1.0, 1.1, 1.2], [2.0, 2.1, 2.2], 0.02
  )
  assert "CONFIRMED, a tie" in report.verdict([1.0, 1.01, 1.02], [1.0, 1.02, 1.01], 0.02)
  assert report.verdict([1.0, 1.1], [1.0, 1.1], None).endswith("not resolved at this n")
  assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
  # an analysis cell shows a spread only where there is one
  assert (fmt([1.0, 3.0]), fmt([1.1]), fmt([])) == ("2.00 +- 1.41", "1.10 (1 seed)", "-")


def test_comparison_status_and_the_seeds_that_would_resolve_it():
  # std 0.3 in both rows, the paper's +0.5: n = (1.96 + 0.84)^2 * 0.18 / 0.25 = 5.65 -> 6 seeds a
  # row
  method, baseline = [10.3, 10.6, 10.9], [10.0, 10.3, 10.6]
  c = report.compare(method, baseline, 0.5)
  assert c.delta == pytest.approx(0.3) and c.two_se == pytest.approx(2 * np.sqrt(2 * 0.09 / 3))
  assert (c.status, c.seeds_needed, c.seeds) == ("not resolved", 6, (3, 3))
  # n seeds of that spread resolve a true +0.5 in ~80% of draws (the power the estimate promises)
  rng = np.random.default_rng(0)
  hits = [
    report.compare(rng.normal(0.5, 0.3, 6), rng.normal(0.0, 0.3, 6), 0.5).resolved
    for _ in range(2000)
  ]
  assert 0.70 < np.mean(hits) < 0.90
  assert report.compare(method, baseline, -0.5).seeds_needed == 6  # the sign does not matter for n
  # a tie: the margin is what must be resolved
  assert report.compare(method, baseline, 0.0).seeds_needed == int(
    np.ceil(report.POWER * 0.18 / 0.25**2)
  )
  assert report.compare([1.0, 1.1], [1.0, 1.1], None).seeds_needed is None
  few = report.compare([1.0], [0.5, 0.7], 0.3)
  assert (
    few.status == "too few seeds" and few.delta == pytest.approx(0.4) and few.seeds_needed is None
  )


def test_a_claimed_direction_is_judged_by_its_interval():
  """'above': resolved positive / negative; 'not below': the interval at worst a tie
  (>= -TIE_MARGIN) confirms it, resolved below zero otherwise contradicts it. The ledger's
  acb_online - acb (-0.28, 2 se 0.18) is the contradicted case."""
  up, flat, down = [1.3, 1.4, 1.5], [1.0, 1.1, 1.2], [0.6, 0.7, 0.8]
  assert report.compare(up, flat, "above").status == "confirmed"
  assert report.compare(down, flat, "above").status == "contradicted"
  assert report.compare([1.0, 1.4, 0.8], flat, "above").status == "not resolved"
  assert report.compare(up, flat, "above").seeds_needed is None
  assert report.compare(up, flat, "not below").status == "confirmed"
  assert report.compare([1.05, 1.1, 1.15], flat, "not below").status == "confirmed"  # a tie
  assert report.compare([0.95, 1.0, 1.05], flat, "not below").status == "confirmed"  # -0.1
  orepa = report.compare(Sample(2, 92.29, 0.05), Sample(3, 92.57, 0.14), "not below")
  assert orepa.delta == pytest.approx(-0.28) and orepa.status == "contradicted"
  assert report.compare([1.0, 1.5, 0.5], flat, "not below").status == "not resolved"
  assert report.compare([1.0, 1.5, 0.5], flat, "not below").seeds_needed >= 2
  assert report.verdict(down, flat, "not below").endswith("CONTRADICTED, ours resolved below")
  assert report.verdict(up, flat, "above").endswith("vs the paper's 'above': CONFIRMED")
  assert "not resolved; ~" in report.verdict([1.0, 1.5, 0.5], flat, "not below")
  with pytest.raises(ValueError, match="'above' or 'not below', got 'below'"):
    report.compare(up, flat, "below")  # type: ignore[arg-type]
  # every row without a number that names a baseline claims a direction, and the report says it
  claims = {r.name: r.claim for r in rows.ROWS.values() if r.baseline is not None}
  assert claims["repvgg"] == "above" and claims["acb_online"] == "not below"
  assert claims["repvgg_qa"] == "not below" and claims["acb"] == pytest.approx(1.11)


def test_lengths_parse_and_name_their_folders():
  assert rows.parse_lengths("") == repro_fmnist.EPOCHS
  assert rows.parse_lengths("10") == dict.fromkeys(rows.METHODS, 10.0)
  assert rows.parse_lengths("10, rotate=20") == {
    **dict.fromkeys(rows.METHODS, 10.0),
    "rotate": 20.0,
  }
  assert rows.parse_lengths("acb=2.5") == {**repro_fmnist.EPOCHS, "acb": 2.5}
  for bad, match in (
    ("acnet=10", "unknown method 'acnet'"),
    ("0", "positive"),
    ("ten", "positive"),
    ("acb=-1", "positive"),
  ):
    with pytest.raises(ValueError, match=match):
      rows.parse_lengths(bad)
  assert [layout.length_dir(e) for e in (10.0, 2.5, 1)] == ["e10", "e2.5", "e1"]
  assert [layout.dir_length(n) for n in ("e10", "e2.5", "ex", "seed0", "e0", "einf")] == [
    10,
    2.5,
    None,
    None,
    None,
    None,
  ]
  assert report.length_spec(rows.parse_lengths("10")) == "10"
  assert report.length_spec(repro_fmnist.EPOCHS) == ""
  assert report.length_spec({**repro_fmnist.EPOCHS, "acb": 10.0}) == "acb=10"


def test_hardware_of_a_run(runs):
  summary = RunDir(_wd(runs, "sn_v4", "seed0")).read_summary()
  assert dataclasses.replace(summary, platform="cpu", host_cores=2).hardware == "CPU, 2 cores"
  assert dataclasses.replace(summary, platform="cpu", host_cores=1).hardware == "CPU, 1 core"
  assert (
    dataclasses.replace(summary, platform="cpu", host_cores=None).hardware
    == "CPU (cores not recorded)"
  )
  gpu = dataclasses.replace(summary, platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
  assert gpu.hardware == "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="session")
def reported(runs, tmp_path_factory):
  """A copy of the runs in which acb_hor seed0 diverged (its FAILED file), and its report (which
  leaves the analyses cached in the copy): (runs, report path, report text)."""
  root = tmp_path_factory.mktemp("reported")
  suite = root / "runs"
  shutil.copytree(runs, suite)
  failed = Suite(suite).workdir("acb_hor", "seed0")
  failed.mkdir(parents=True)
  (failed / "FAILED").write_text("exit status 3\n")
  path = root / "results" / "REPRODUCTION.md"
  return suite, path, report.write_report(suite, path)


def test_report_reads_the_runs_and_keeps_the_notes(reported):
  suite, path, text = reported
  summaries = [
    json.loads((_wd(suite, "sn_v4", s) / "summary.json").read_text()) for s in ("seed0", "seed1")
  ]
  mean, std = mean_std([100 * s["deployed_test_accuracy"] for s in summaries])
  epochs = f"{summaries[0]['epochs']:g}"
  assert f"| `sn_v4` | 24,760 | 54,860 | {mean:.2f} +- {std:.2f} | 2 |" in text
  assert f"| 100.00 | {epochs} | {Summary.from_json(summaries[0]).hardware} |" in text
  assert "| `acb_hor` | - | - | - | 0 (1 diverged) |" in text and "| (1) | - | - |" in text
  for name in (
    "rotate_fig5_sn_v4.png",
    "acu_positions_acu.png",
    "acnet_pruning_acb.png",
    "versatile_fig3.png",
  ):
    assert _is_png(path.parent / "repro" / name) and f"repro/{name}" in text
  # the claims table: one seed a row here at most, so every claim is 'too few seeds'
  assert "## The papers' claims at a glance" in text
  assert "| `acb` - `acb_baseline` | Table 1, Cifar-quick CIFAR-10 | +1.11 | 1 |" in text
  assert "| 1 / 1 | too few seeds | - |" in text
  assert (
    "| `acb_ver` - `acb` | Table 4, ResNet-18 ImageNet | -0.36 | 1 | - | 0 / 1 | not run | - |"
    in text
  )
  assert (
    "Not run at 1 epochs: `acb_ver`, `acb_bn_sum`, `acb_online`, `dbb`, `dbb_online`, `repvgg`, "
    "`repvgg_online`, `repvgg_qa` (`--rows ...`)." in text  # the default lengths here
  )
  assert "| `acb_ver` |" not in text
  # every length on disk: here only the default ones (e1, e2)
  assert "| method vs baseline | paper | 1 epochs | 2 epochs |" in text
  path.write_text(text.replace(report.NOTES[0], report.NOTES[0] + "\nWhat it means.\n"))
  again = report.write_report(suite, path)
  assert "\nWhat it means.\n" + report.NOTES[1] in again


def test_report_at_other_lengths_reads_their_folders(runs, tmp_path):
  suite = tmp_path / "runs"
  # sn_v4 at seeds 0 and 1 stand in for 10-epoch runs of sn_v9 and sn_v4
  for seed in (
    "seed0",
    "seed1",
  ):
    for row in ("sn_v9", "sn_v4"):
      shutil.copytree(_wd(runs, "sn_v4", seed), suite / "e10" / row / seed)
  text = report.write_report(suite, tmp_path / "r.md", methods=("rotate",), epochs={"rotate": 10.0})
  assert "--epochs rotate=10 --methods rotate" in text and "Epochs per method: rotate 10." in text
  # the same accuracies in both rows: a difference of 0, not resolved, and the seeds -0.30 would
  # need
  accs = [
    100 * json.loads((_wd(runs, "sn_v4", s) / "summary.json").read_text())["deployed_test_accuracy"]
    for s in ("seed0", "seed1")
  ]
  std = mean_std(accs)[1]
  needed = max(2, int(np.ceil(report.POWER * 2 * std**2 / 0.3**2)))
  ours = f"+0.00 +- {2 * std:.2f}"
  assert (
    f"| `sn_v4` - `sn_v9` | Table I, MNIST | -0.30 | 10 | {ours} | 2 / 2 | not resolved | {needed} "
    "|" in text
  )
  assert f"| `sn_v4` - `sn_v9` | -0.30 | {ours} (2) |" in text  # the only length on disk


def _without_kept_notes(text: str) -> list[str]:
  return [line for line in text.splitlines() if line not in (KEPT, "")]


def test_the_ledger_keeps_what_the_report_reads_when_the_runs_are_gone(reported, tmp_path):
  from train.reproduce import driver

  suite = tmp_path / "runs"
  shutil.copytree(reported[0], suite)  # with its analyses
  book, path = tmp_path / "ledger", tmp_path / "results" / "REPRODUCTION.md"
  written = driver.analyze_finished(suite, list(rows.ROWS), None, rows.parse_lengths(""), book)
  assert sorted(p.relative_to(book).as_posix() for p in written) == [
    "e1/acb/seed0.json",
    "e1/acb_baseline/seed0.json",
    "e1/acb_hor/seed0.json",
    "e1/acu/seed0.json",
    "e1/lenet_model3/seed0.json",
    "e2/sn_v4/seed0.json",
    "e2/sn_v4/seed1.json",
  ]
  here = report.write_report(suite, path, ledger=book)
  # the ledger adds nothing here
  assert here == report.write_report(suite, tmp_path / "plain" / "R.md")
  shutil.rmtree(suite)  # the machine that trained them is gone: the report reads the ledger alone
  there = report.write_report(suite, path, ledger=book)
  assert _without_kept_notes(there) == _without_kept_notes(here)
  assert there.count(KEPT) == 3  # rotate's, the ACU's and versatile's figures stay as they were
  assert "| `acb_hor` | - | - | - | 0 (1 diverged) |" in there
  assert driver.pending(
    suite, ["sn_v4", "acb_hor", "acb"], ["0", "1"], rows.parse_lengths(""), ledger_dir=book
  ) == [("acb_hor", "1", 1.0), ("acb", "1", 1.0)]


def test_a_row_whose_runs_were_lost_pools_its_aggregate_with_new_seeds(runs, tmp_path):
  from train.reproduce import ledger

  path = tmp_path / "old" / "REPRODUCTION.md"
  lines = report.write_report(runs, path, methods=("rotate",)).splitlines()
  aggregates = ledger.aggregates_from_report("\n".join(lines), "the old report")
  assert list(aggregates) == ["sn_v4"]  # the only rotate row with runs here
  old = aggregates["sn_v4"]
  accs = [
    100 * json.loads((_wd(runs, "sn_v4", s) / "summary.json").read_text())["deployed_test_accuracy"]
    for s in ("seed0", "seed1")
  ]
  assert old.seeds == ("seed0", "seed1") and old.accuracy.n == 2 and old.parameters == 24_760
  np.testing.assert_allclose([old.accuracy.mean, old.accuracy.std], mean_std(accs), atol=0.005)
  book, suite = tmp_path / "ledger", tmp_path / "runs"
  ledger.write_aggregate(book, "sn_v4", Suite(suite).length("sn_v4"), old)
  # a new seed of that row
  shutil.copytree(_wd(runs, "sn_v4", "seed1"), Suite(suite).workdir("sn_v4", "seed2"))
  pooled_suite = Suite(suite, ledger=book)
  assert pooled_suite.seeds("sn_v4") == ["seed2"] and pooled_suite.accuracy("sn_v4").n == 3
  np.testing.assert_allclose(
    [pooled_suite.accuracy("sn_v4").mean, pooled_suite.accuracy("sn_v4").std],
    mean_std(accs + accs[1:]),
    atol=0.01,
  )
  text = report.write_report(suite, path, methods=("rotate",), ledger=book)
  pooled = pooled_suite.accuracy("sn_v4")
  assert f"| `sn_v4` | 24,760 | 54,860 | {pooled.mean:.2f} +- {pooled.std:.2f} | 3 |" in text
  assert (
    "Runs lost before the ledger existed" in text
    and "`sn_v4` seed0, seed1. From the old report." in text
  )


def test_reproduce_commands_and_the_busy_check(tmp_path):
  from train.reproduce import driver

  cmd = driver.run_command("acb_hor", 2, "runs/repro", 10.0)
  assert cmd[1:] == [
    "-m",
    "train.main",
    "--config=configs/repro_fmnist.py:row=acb_hor,seed=2,epochs=10",
    "--workdir=runs/repro/e10/acb_hor/seed2",
  ]
  assert repro_fmnist.get_config("row=acb_hor,seed=2,epochs=10").num_epochs == 10
  workdir = tmp_path / "row" / "seed0"
  workdir.mkdir(parents=True)
  assert RunDir(workdir).holder() is None
  holds = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1 on h'); print('held', flush=True); "
    "time.sleep(60)"
  )
  busy = subprocess.Popen(
    [sys.executable, "-c", holds, str(workdir / "LOCK")], stdout=subprocess.PIPE, text=True
  )
  try:
    assert busy.stdout.readline().strip() == "held"
    assert RunDir(workdir).holder() == "pid 1 on h"
    assert (
      RunDir(tmp_path / "row" / "seed1").holder() is None
      and RunDir(tmp_path / "row" / "seed").holder() is None
    )
  finally:
    busy.kill()
    busy.wait()
  assert RunDir(workdir).holder() is None  # the holder died: its lock is stale, not held


def test_report_of_one_family_and_the_sector_count(runs, tmp_path):
  path = tmp_path / "rotate.md"
  text = report.write_report(runs, path, methods=("rotate",))
  assert "## RotateConv" in text and "## ACNet" not in text and "## Versatile" not in text
  assert "angles that changed sector (%)" in text
  changed = analyze.analyze(_wd(runs, "sn_v4", "seed0"), out=tmp_path / "a")["rotate"]["convs/1"][
    "changed_sector"
  ]
  assert 0.0 <= changed <= 1.0
  with pytest.raises(ValueError, match="unknown methods"):
    report.write_report(runs, path, methods=("acnet",))


def _fake_runs(monkeypatch, tmp_path: Path, exit_for: dict[str, int]) -> None:
  """The driver's runs are `_fake_run`s (train.main's command replaced by it)."""
  from train.reproduce import driver

  script = _fake_run(tmp_path, exit_for)
  monkeypatch.setattr(
    driver,
    "run_command",
    lambda row, seed, runs, epochs: [
      sys.executable,
      "-c",
      script,
      str(layout.run_dir(runs, row, seed, epochs)),
    ],
  )


def _fake_run(tmp_path: Path, exit_for: dict[str, int]) -> str:
  """A stand-in for train.main: records its cores, times and environment as the run's summary.

  A row's negative code kills its first run with that signal (-9: as the OOM killer does); the
  run after it finishes.
  """
  return (
    "import json, os, signal, sys, time, pathlib\n"
    "wd = pathlib.Path(sys.argv[1]); wd.mkdir(parents=True, exist_ok=True); start = time.time()\n"
    f"code = {exit_for!r}.get(wd.parent.name, 0)\n"
    "time.sleep(0.6)\n"
    "if code < 0 and not (wd / 'killed').exists():\n"
    "  (wd / 'killed').write_text('')\n"
    "  os.kill(os.getpid(), -code)\n"
    "if code > 0: sys.exit(code)\n"
    "(wd / 'summary.json').write_text(json.dumps({'cores': sorted(os.sched_getaffinity(0)),\n"
    "  'start': start, 'end': time.time(),\n"
    "  'prealloc': os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')}))\n"
  )


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins cores on Linux")
def test_driver_trains_runs_at_once_pinned_and_never_redoes_one(tmp_path, monkeypatch):
  from train.reproduce import driver

  _fake_runs(monkeypatch, tmp_path, {"acb_hor": 3})
  lengths = rows.parse_lengths("3")
  names = ["acb", "acb_baseline", "acb_hor"]
  todo = driver.pending(tmp_path, names, ["0", "1"], lengths)
  assert todo == [(r, s, 3.0) for s in "01" for r in names]
  groups = driver.core_groups(2)
  driver.Driver(tmp_path, parallel=2, analyze=False).run_all(todo)
  done = [
    json.loads((layout.run_dir(tmp_path, r, s, 3.0) / "summary.json").read_text())
    for s in "01"
    for r in names[:2]
  ]
  assert all(d["prealloc"] == "false" for d in done)
  if len(groups) == 2:  # each run on its half of the cores, two at a time
    assert all(d["cores"] in groups for d in done)
    first, second = done[0], done[1]
    assert first["start"] < second["end"] and second["start"] < first["end"]
  assert (
    (layout.run_dir(tmp_path, "acb_hor", 0, 3.0) / "FAILED").read_text().startswith("exit status 3")
  )
  # finished and failed runs are not redone
  assert driver.pending(tmp_path, names, ["0", "1"], lengths) == []
  assert driver.pending(tmp_path, names, ["0"], rows.parse_lengths("4"))[0] == ("acb", "0", 4.0)
  assert driver.core_groups(3, [0, 1, 2, 3, 4, 5, 6]) == [[0, 1], [2, 3], [4, 5, 6]]
  assert driver.core_groups(4, [0, 1]) == [[0], [1]]


def test_a_run_killed_by_sigkill_is_not_a_result_and_resumes(tmp_path, monkeypatch, capsys):
  from train.reproduce import driver

  _fake_runs(monkeypatch, tmp_path, {"acb": -signal.SIGKILL})
  book, lengths = tmp_path / "ledger", rows.parse_lengths("3")
  todo = driver.pending(tmp_path, ["acb", "acb_baseline"], ["0"], lengths, ledger_dir=book)
  driver.Driver(tmp_path, analyze=False, ledger_dir=book).run_all(todo)
  wd = layout.run_dir(tmp_path, "acb", 0, 3.0)
  assert "acb seed0: killed by SIGKILL; not recorded" in capsys.readouterr().err
  assert not (wd / "FAILED").exists() and not layout.record_path(book, "acb", 0, 3.0).exists()
  assert (layout.run_dir(tmp_path, "acb_baseline", 0, 3.0) / "summary.json").exists()
  # the same command again: only the killed run is pending, and it finishes
  again = driver.pending(tmp_path, ["acb", "acb_baseline"], ["0"], lengths, ledger_dir=book)
  assert again == [("acb", "0", 3.0)]
  driver.Driver(tmp_path, analyze=False, ledger_dir=book).run_all(again)
  assert (wd / "summary.json").exists() and not (wd / "FAILED").exists()


def test_driver_stops_when_a_run_is_interrupted(tmp_path, monkeypatch):
  from train.reproduce import driver

  _fake_runs(monkeypatch, tmp_path, {"acb": 130})
  todo = driver.pending(tmp_path, ["acb", "acb_baseline"], ["0"], rows.parse_lengths("3"))
  with pytest.raises(KeyboardInterrupt):
    driver.Driver(tmp_path, parallel=1, analyze=False).run_all(todo)
  assert not (layout.run_dir(tmp_path, "acb", 0, 3.0) / "FAILED").exists()  # resumes next time
  assert not layout.run_dir(tmp_path, "acb_baseline", 0, 3.0).exists()  # never started


def test_stopped_command_exits_130_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys):
  from absl import flags
  from absl.testing import flagsaver

  from train import cli
  from train.reproduce import driver

  def exit_now(status: int):  # the command's os._exit would end this test process
    raise SystemExit(status)

  monkeypatch.setattr(cli, "exit_now", exit_now)
  _fake_runs(monkeypatch, tmp_path, {"acb": 130})
  driver.define_flags()
  with flagsaver.flagsaver():
    flags.FLAGS(
      [
        "reproduce",
        f"--runs={tmp_path}",
        "--epochs=3",
        "--rows=acb,acb_baseline",
        "--seeds=0",
        "--report=",
        "--noanalyze",
        f"--ledger={tmp_path / 'ledger'}",
      ]
    )
    with pytest.raises(SystemExit) as stop:
      driver.main([])
  assert stop.value.code == 130
  assert "the same command resumes" in capsys.readouterr().err


def test_acb_section_reads_a_model_of_mixed_kernel_sizes_at_its_3x3_layers():
  """ACNet's AlexNet: one 11x11, one 5x5 and three 3x3 layers. A is taken over the three 3x3
  ones; every kxk layer is pruned, so a region's sparsity stops where the first layer's region is
  full: the 3x3 corners at 4/9, the 11x11 skeleton at 21/121."""
  import kshapes_jax as K
  from train import data
  from train.analyze import acb as acb_section

  deployed = K.deploy(K.models.create("acnet_alexnet", conv="acb", image_size=72, num_classes=3))
  matrix, layers = acb_section.magnitude(deployed)
  assert layers == 3 and matrix.shape == (3, 3) and matrix[1, 1] == 1.0
  images = np.random.default_rng(0).integers(0, 256, (4, 72, 72, 3), dtype=np.uint8)
  split = data.MemorySplit(images, np.arange(4, dtype=np.int32) % 3)
  dataset = data.Dataset("probe", split, split, 3, (0.5,) * 3, (0.25,) * 3)
  curves = acb_section.pruning_curves(
    deployed, dataset, split, sparsities=(0.0, 0.4, 0.45), seeds=(0,)
  )
  assert np.isfinite(curves["corners"][0, :2]).all() and np.isnan(curves["corners"][0, 2])
  assert np.isfinite(curves["skeleton"][0, 0]) and np.isnan(curves["skeleton"][0, 1:]).all()


@pytest.mark.parametrize(
  "report", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "results").rglob("*.md"))
)
def test_each_committed_report_shows_each_figure_once_and_every_figure_exists(report):
  """Rows share the report's figure folder: a figure named by its section alone, not its row,
  is overwritten by the next row's (the dcls and dcls_gauss rows showed one file)."""
  path = REPO / report
  figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", path.read_text())
  assert len(figures) == len(set(figures)), f"{report} shows a figure twice"
  for figure in figures:
    assert (path.parent / figure).is_file(), f"{report}: {figure} is missing"
