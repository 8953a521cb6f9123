"""The benchmark harness: timing plumbing, target verdicts, the README's copy of the committed table.

Speed itself is never asserted here (benchmarks are not tests); these only
check that the harness measures what it says and reports it faithfully.
"""

from pathlib import Path

import pytest

from bench import layers, run, timing

ROOT = Path(__file__).resolve().parents[1]


def test_every_layer_kind_gives_the_plain_number_of_maps():
  for c in (16, 32, 64):
    for name, make in layers.layer_factories(c).items():
      assert make().out_features == c, name


def test_layer_bench_runs_and_reports_ratios_to_plain():
  rows = layers.bench_layers(2, 1, shapes=((8, 16),), kinds=["rotate4", "acu_r1"], log=lambda *_: None)
  assert [r["kind"] for r in rows] == ["plain", "rotate4", "acu_r1"]
  assert rows[0]["train_ratio"] == 1.0 and rows[0]["eval_ratio"] == 1.0
  for r in rows:
    assert r["train_ms"] > 0 and r["eval_ms"] > 0 and r["compile_train_s"] > 0
    assert r["train_ratio"] == pytest.approx(r["train_ms"] / rows[0]["train_ms"])


def test_interleaved_runs_carry_the_state():
  calls = []

  def step(state, x):
    calls.append(int(state))
    return state + x, 0

  case = timing.Timed("count", step, [0, 1])
  timing.run_interleaved([case], reps=3, warmup=2, carry=True)
  assert calls == [0, 1, 2, 3, 4] and len(case.times) == 3


def test_targets_are_judged_against_the_measured_ratio():
  lay = [{"kind": "acu_r1", "train_ratio": 1.21}, {"kind": "acu_r1", "train_ratio": 1.0},
         {"kind": "acu_gather", "train_ratio": 2.0}]
  mod = [{"group": "resnet20", "case": "rotate4", "train_ratio": 1.02},
         {"group": "resnet20", "case": "rotate2", "train_ratio": 1.08},
         {"group": "lenet", "case": "model3", "train_ratio": 0.9},
         {"group": "lenet", "case": "model3_cropped", "train_ratio": 0.6}]
  got = {t["key"]: (t["measured"], t["met"]) for t in run.evaluate_targets(lay, mod)}
  assert got["rotate"] == (1.08, False)  # the worse of the two versions
  assert got["acu_r1"][0] == pytest.approx(1.1) and got["acu_r1"][1]  # geometric mean
  assert got["acu_gather"] == (2.0, True)
  assert got["versatile"] == (0.6, True)  # the better of the two designs
  assert got["acb"] == (None, None)


def test_readme_shows_the_committed_cpu_results():
  table = ROOT / "results" / "bench-cpu.md"
  assert table.exists(), "run python -m bench.run and commit results/"
  readme = (ROOT / "README.md").read_text()
  start, end = "<!-- bench:start -->\n", "<!-- bench:end -->"
  assert readme[readme.index(start) + len(start):readme.index(end)] == table.read_text()


def test_bucketed_run_ratio_weights_the_two_radii_by_steps():
  assert run.bucketed_run_ratio(1.0, 2.0) == pytest.approx((10 * 1.0 + 54 * 2.0) / 64)
  assert run.bucketed_run_ratio(None, 2.0) is None
