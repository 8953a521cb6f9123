"""train.reproduce.ledger: pooled statistics, records, aggregates of lost runs, and the driver
skipping what is recorded."""

import json

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from train.reproduce import driver, layout, ledger, report, rows
from train.reproduce.ledger import Aggregate, Sample
from train.trainer.summary import Summary

_ACCURACY = st.floats(50.0, 100.0, allow_nan=False)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(_ACCURACY, max_size=6), st.lists(_ACCURACY, max_size=6))
def test_pooling_two_sets_of_seeds_is_the_statistics_of_all(a, b):
  pooled, whole = Sample.of(a).pool(Sample.of(b)), Sample.of(a + b)
  assert pooled.n == whole.n == len(a) + len(b)
  if whole.n:
    np.testing.assert_allclose(pooled.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(pooled.std, whole.std, atol=1e-6)
  else:
    assert np.isnan(pooled.mean)


def test_sample_of_one_and_none():
  assert Sample.of([91.5]) == Sample(1, 91.5, 0.0)
  assert Sample.of([]).n == 0 and np.isnan(Sample.of([]).mean)
  assert Sample(2, 90.0, 1.0).pool(Sample.of([])) == Sample(2, 90.0, 1.0)


def _summary(accuracy: float) -> Summary:
  """A run's summary with that deployed test accuracy (the rest as a small CPU run's)."""
  return Summary(
    model="sn",
    conv="plain",
    dataset="fashion_mnist",
    source="idx",
    seed=0,
    steps=10,
    epochs=1.0,
    devices=1,
    platform="cpu",
    device_kind="cpu",
    host_cores=1,
    precision="default",
    dtype="float32",
    deterministic=True,
    parameters=10,
    deployed_parameters=10,
    test_accuracy=accuracy,
    test_loss=0.5,
    deployed_test_accuracy=accuracy,
    deployed_test_loss=0.5,
    deployed_prediction_agreement=1.0,
    test_examples=100,
    acu_radii=[],
    final_train_loss=0.5,
    seconds_total=1.0,
    workdir="w",
  )


def test_records_hold_a_summary_or_a_failure(tmp_path):
  path = layout.record_path(tmp_path, "acb", "seed2", 10.0)
  assert path == tmp_path / "e10" / "acb" / "seed2.json"
  with pytest.raises(ValueError, match="either"):
    ledger.write(path, _summary(0.9), None, failed="exit status 3")
  with pytest.raises(ValueError, match="either"):
    ledger.write(path, None, None)
  ledger.write(path, _summary(0.9), {"sections": []})
  ledger.write(
    layout.record_path(tmp_path, "acb", "seed3", 10.0), None, None, failed="exit status 3"
  )
  assert ledger.seeds(tmp_path, "acb", 10.0) == {
    "seed2": {"summary": _summary(0.9).to_json(), "results": {"sections": []}},
    "seed3": {"failed": "exit status 3"},
  }
  assert json.loads(path.read_text())["summary"]["deployed_test_accuracy"] == 0.9
  assert layout.lengths(tmp_path) == [10.0] and not list(tmp_path.rglob("*.tmp"))


def _aggregate(seeds=("seed0", "seed1"), n=2) -> Aggregate:
  return Aggregate(
    seeds=seeds,
    accuracy=Sample(n, 90.5, 0.2),
    parameters=10,
    deployed_parameters=20,
    agreement=100.0,
    epochs=10.0,
    hardware="CPU, 1 core",
    minutes_per_run=12.0,
    source="a report",
  )


def test_aggregates_round_trip_and_refuse_a_wrong_count(tmp_path):
  path = ledger.write_aggregate(tmp_path, "sn_v4", 10.0, _aggregate())
  assert path == tmp_path / "e10" / "sn_v4" / layout.AGGREGATE
  assert ledger.read_aggregate(tmp_path, "sn_v4", 10.0) == _aggregate()
  assert ledger.read_aggregate(tmp_path, "sn_v2", 10.0) is None
  path.write_text(json.dumps(_aggregate(seeds=("seed0",)).to_json()))
  with pytest.raises(ValueError, match="1 seeds"):
    ledger.read_aggregate(tmp_path, "sn_v4", 10.0)


def test_aggregates_from_a_report_refuse_what_they_cannot_read():
  with pytest.raises(ValueError, match="no row tables"):
    ledger.aggregates_from_report("# A report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", "s")
  table = (
    "| row | params | deployed params | test acc. (%) | seeds | paper (%) | paper's setting | "
    "deployed = trained (%) | epochs | hardware | min / run "
    "|\n|---|---|---|---|---|---|---|---|---|---|---|\n"
  )
  one = (
    "| `acb` | 146,986 | 115,306 | 92.57 +- 0.00 | 1 | 84.24 | CIFAR-10, Table 1 | 99.98 | 10 "
    "| CPU, 1 core | 47.6 |\n"
  )
  got = ledger.aggregates_from_report(table + one + "\nafter\n| x | y |\n", "s")
  assert got == {
    "acb": Aggregate(
      ("seed0",), Sample(1, 92.57, 0.0), 146_986, 115_306, 99.98, 10.0, "CPU, 1 core", 47.6, "s"
    )
  }
  with pytest.raises(ValueError, match="diverged"):
    ledger.aggregates_from_report(table + one.replace("| 1 |", "| 1 (1 diverged) |"), "s")


def test_the_driver_never_trains_a_recorded_run_again(tmp_path):
  runs, book = tmp_path / "runs", tmp_path / "ledger"
  lengths = rows.parse_lengths("10")
  ledger.write_aggregate(book, "sn_v4", 10.0, _aggregate())
  ledger.write(layout.record_path(book, "sn_v9", "seed1", 10.0), _summary(0.9), None)
  ledger.write(layout.record_path(book, "sn_v9", "seed2", 10.0), None, None, failed="exit status 3")
  todo = driver.pending(runs, ["sn_v9", "sn_v4"], ["0", "1", "2"], lengths, ledger_dir=book)
  assert todo == [("sn_v9", "0", 10.0), ("sn_v4", "2", 10.0)]
  # without the ledger (or at another length) every run is to do
  assert len(driver.pending(runs, ["sn_v9", "sn_v4"], ["0", "1", "2"], lengths)) == 6
  assert (
    len(driver.pending(runs, ["sn_v9", "sn_v4"], ["0"], rows.parse_lengths("20"), ledger_dir=book))
    == 2
  )


def test_the_committed_report_regenerates_from_the_committed_ledger(tmp_path, capsys):
  """`train.reproduce --report_only` remakes results/REPRODUCTION.md byte for byte (but its
  date) from results/runs alone, at the lengths its header names; at lengths without runs it
  leaves the report as it is."""
  import re
  import shutil
  from pathlib import Path

  from absl import flags
  from absl.testing import flagsaver

  results = Path(__file__).resolve().parents[1] / "results"
  committed = (results / "REPRODUCTION.md").read_text()
  out = tmp_path / "results" / "REPRODUCTION.md"
  shutil.copytree(results / "repro", out.parent / "repro")  # the figures it keeps
  shutil.copy(results / "REPRODUCTION.md", out)  # its notes
  assert report.made_with(committed) == "10"
  command = ["reproduce", f"--runs={tmp_path / 'no_runs'}", f"--report={out}", "--report_only"]
  driver.define_flags()
  with flagsaver.flagsaver():
    flags.FLAGS([*command, f"--ledger={results / 'runs'}"])  # no --epochs: the report's
    driver.main([])
  assert "--epochs 10: the lengths of" in capsys.readouterr().out
  undated = lambda t: re.sub(r" on \d{4}-\d{2}-\d{2};", " on DATE;", t)
  assert undated(out.read_text()) == undated(committed)
  with flagsaver.flagsaver():
    flags.FLAGS([*command, f"--ledger={results / 'runs'}", "--epochs=3"])
    with pytest.raises(flags.Error, match="no runs at --epochs 3 .* is left as it is"):
      driver.main([])
  assert undated(out.read_text()) == undated(committed)
  # runs of one method at the report's length, the others' at theirs: another table, refused
  with flagsaver.flagsaver():
    flags.FLAGS([*command, f"--ledger={results / 'runs'}", "--epochs=active=10"])
    with pytest.raises(flags.Error, match="made at --epochs 10, these runs are at --epochs"):
      driver.main([])
  assert undated(out.read_text()) == undated(committed)
