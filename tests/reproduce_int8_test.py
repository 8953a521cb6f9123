"""The INT8 table of the reproduction suite (train.reproduce.int8): a record per run, measured
once and kept, the rows pooled over their seeds with the drops computed per run."""

import json
import types

import pytest
import runs

from train.reproduce import int8 as table

SESSION = "session.x64quantprecision=1"
SCHEME_JAX = "Qwix static PTQ: the test's recipe"


@pytest.fixture(autouse=True)
def _jax_scheme(monkeypatch):
  """The JAX route's current recipe is the test's."""
  monkeypatch.setattr(table, "_current_jax_scheme", lambda: SCHEME_JAX)


def _report(fp32, ort, jax=None, agreement=0.99, agreement_jax=None, default=None):
  """An Int8Report's numbers; `default`: the INT8 file's top-1 in a default session (its
  agreement then 0.97)."""
  return types.SimpleNamespace(
    top1_fp32=fp32,
    top1_int8=ort,
    top1_jax=jax,
    agreement=agreement,
    agreement_jax=agreement_jax,
    top1_int8_default=default,
    agreement_default=None if default is None else 0.97,
    session_config=(SESSION,),
    scheme_jax="" if jax is None else SCHEME_JAX,
  )


def _finished_run(runs, key, qat=None):
  """A finished run RUNS/e10/KEY at base rate 0.1; with `qat` (rate, epochs), a QAT folder
  configured so."""
  run = runs / "e10" / key
  run.mkdir(parents=True)
  (run / "summary.json").write_text("{}")
  (run / "config.json").write_text(json.dumps({"optim": {"learning_rate": 0.1}}))
  if qat is not None:
    (run / "qat").mkdir()
    config = {"optim": {"learning_rate": qat[0]}, "num_epochs": qat[1]}
    (run / "qat" / "config.json").write_text(json.dumps(config))
  return run


def _no_qat(workdir, epochs=1.0, calibration=512):
  raise AssertionError(f"QAT of {workdir} not expected")


def test_a_record_is_the_report_in_percent():
  got = table.record(_report(0.9, 0.89, None, 0.995, default=0.88))
  assert got.pop("session") == SESSION and got.pop("scheme_jax") == ""
  assert got == pytest.approx(
    {
      "top1_fp32": 90.0,
      "top1_int8": 89.0,
      "top1_jax": None,
      "agreement": 99.5,
      "agreement_jax": None,
      "top1_int8_default": 88.0,
      "agreement_default": 97.0,
    }
  )


def test_rows_pool_their_seeds_and_the_drop_is_taken_per_run():
  records = {
    "dcls/seed0": {
      **table.record(_report(0.92, 0.91, 0.915, 0.99, 0.98, default=0.9)),
      "top1_qat": 91.5,
      "qat_epochs": 1.0,
    },
    "dcls/seed1": table.record(_report(0.94, 0.94, 0.935, 0.98, 0.97)),
    "acb_online/seed0": table.record(_report(0.9, 0.902)),
  }
  text = table.table(records, 10)
  dcls = next(line for line in text.splitlines() if line.startswith("| dcls |"))
  # fp32 93 +- 1.41, ORT 92.5 +- 2.12, drops 1 and 0: 0.50 +- 0.71; in a default session one
  # seed of two: drop 2, counted; Qwix drops 0.5, 0.5; QAT (1 epoch) on one seed of two: 91.5,
  # drop 0.5
  assert dcls == (
    "| dcls | 2 | 93.00 +- 1.41 | 92.50 +- 2.12 | 0.50 +- 0.71 | 2.00 (1) | 92.50 +- 1.41 "
    "| 0.50 +- 0.00 | 1 | 91.50 (1) | 0.50 (1) | 98.50 +- 0.71 / 97.50 +- 0.71 | yes / yes |"
  )
  online = next(line for line in text.splitlines() if line.startswith("| acb_online |"))
  assert online == (
    "| acb_online | 1 | 90.00 | 90.20 | -0.20 | - | - | - | - | - | - | 99.00 / - | yes / - |"
  )
  # a row whose mean drop is above the target is marked
  worse = table.table({"repvgg/seed0": table.record(_report(0.92, 0.914, 0.9155))}, 10)
  assert worse.splitlines()[-1].endswith("| **no** / yes |")


def test_a_run_is_measured_once_and_its_record_outlives_it(tmp_path, monkeypatch):
  for row, seed in (("dcls", 0), ("dcls", 1), ("dcls_gauss", 0)):
    run = tmp_path / "runs" / "e10" / row / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
  (tmp_path / "runs" / "e10" / "dcls" / "seed2").mkdir()  # unfinished: no summary
  measured = []

  def measure(workdir, calibration=512):
    measured.append(f"{workdir.parent.name}/{workdir.name}")
    return table.record(_report(0.9, 0.9))

  monkeypatch.setattr(table, "measure", measure)
  monkeypatch.setattr(table, "measure_qat", _no_qat)
  out = tmp_path / "results"
  table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert measured == ["dcls/seed0", "dcls/seed1", "dcls_gauss/seed0"]
  # later, on another machine: only the record of dcls/seed0 is left, the runs are gone
  kept = {"dcls/seed0": json.loads((out / "e10.json").read_text())["dcls/seed0"]}
  (out / "e10.json").write_text(json.dumps(kept))
  (tmp_path / "runs" / "e10" / "dcls" / "seed1" / "summary.json").unlink()
  (tmp_path / "runs" / "e10" / "dcls_gauss" / "seed0" / "summary.json").unlink()
  table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert len(measured) == 3  # nothing measured again
  assert "| dcls | 1 |" in (out / "e10.md").read_text()


def test_qat_is_added_to_the_records_of_the_runs_on_hand_once(tmp_path, monkeypatch):
  """A record without QAT gets it where its run is here (and only then), once."""
  for seed in (0, 1):
    _finished_run(tmp_path / "runs", f"repvgg/seed{seed}")
  out = tmp_path / "results"
  out.mkdir()
  old = {f"repvgg/seed{s}": table.record(_report(0.9, 0.89)) for s in (0, 1, 2)}  # seed2 gone
  (out / "e10.json").write_text(json.dumps(old))
  tuned = []

  def measure_qat(workdir, epochs=1.0, calibration=512):
    tuned.append((workdir.name, epochs))
    # the rate as a run's float32 config value reads back: the same rate
    return {
      "top1_qat": 89.8,
      "top1_qat_fp32": 90.1,
      "qat_lr": 0.00010000000474974513,
      "qat_epochs": epochs,
    }

  monkeypatch.setattr(table, "measure", lambda *a, **k: pytest.fail("measured again"))
  monkeypatch.setattr(table, "measure_qat", measure_qat)
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0.5)
  assert tuned == [("seed0", 0.5), ("seed1", 0.5)]
  assert records["repvgg/seed0"]["top1_qat"] == 89.8 and "top1_qat" not in records["repvgg/seed2"]
  line = next(x for x in (out / "e10.md").read_text().splitlines() if x.startswith("| repvgg |"))
  assert "| 0.5 | 89.80 +- 0.00 (2) | 0.20 +- 0.00 (2) |" in line
  table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0.5)
  assert len(tuned) == 2  # kept


def test_qat_of_another_recipe_is_tuned_again_on_hand_and_dropped_when_gone(tmp_path, monkeypatch):
  """QAT records without `qat_lr` came from fine-tuning at 0.01 of the base rate, and one with
  another `qat_lr` from another recipe: a run on hand is fine-tuned again (its old QAT folder
  set aside, not resumed), a gone run's old-recipe QAT numbers are dropped and its
  post-training ones kept."""
  out = tmp_path / "results"
  out.mkdir()
  old = {
    f"repvgg/seed{s}": {**table.record(_report(0.9, 0.89)), "top1_qat": 88.0, "top1_qat_fp32": 88.5}
    for s in (0, 1, 2)
  }
  old["repvgg/seed2"]["qat_lr"] = 1e-3  # the rate its schedule ended at, an older recipe
  (out / "e10.json").write_text(json.dumps(old))
  for seed in (0, 2):  # seed1 gone
    _finished_run(tmp_path / "runs", f"repvgg/seed{seed}", qat=(0.001, 1.0))
  (tmp_path / "runs" / "e10" / "repvgg" / "seed2" / "qat-lr0.001-e1").mkdir()  # set aside before
  rates = []

  def measure_qat(workdir, epochs=1.0, calibration=512):
    assert not (workdir / "qat").exists()  # set aside, so not resumed
    rates.append(table.qat_learning_rate(workdir))
    return {"top1_qat": 89.8, "top1_qat_fp32": 90.1, "qat_lr": rates[-1], "qat_epochs": epochs}

  monkeypatch.setattr(table, "measure", lambda *a, **k: pytest.fail("measured again"))
  monkeypatch.setattr(table, "measure_qat", measure_qat)
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=1)
  assert rates == pytest.approx([1e-4, 1e-4])
  seeds = tmp_path / "runs" / "e10" / "repvgg"
  assert (seeds / "seed0" / "qat-lr0.001-e1" / "config.json").exists()
  assert (seeds / "seed2" / "qat-lr0.001-e1-2" / "config.json").exists()
  assert records["repvgg/seed0"]["top1_qat"] == records["repvgg/seed2"]["top1_qat"] == 89.8
  assert "top1_qat" not in records["repvgg/seed1"] and records["repvgg/seed1"]["top1_int8"] == 89.0
  # the new recipe's QAT is kept
  table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=1)
  assert len(rates) == 2


def test_qat_of_other_epochs_is_tuned_again_and_the_table_says_each_rows_epochs(
  tmp_path, monkeypatch
):
  """A record says its QAT's epochs (a record written before it did gets them from its run's
  QAT folder, or '?' when the run is gone); a run on hand fine-tuned for other epochs than asked
  is fine-tuned again, its old folder set aside; the table shows each row's epochs."""
  out = tmp_path / "results"
  out.mkdir()
  rate = 0.00010000000474974513
  old = {
    f"repvgg/seed{s}": {**table.record(_report(0.9, 0.89)), "top1_qat": 89.5, "qat_lr": rate}
    for s in (0, 1, 2)
  }
  (out / "e10.json").write_text(json.dumps(old))
  for seed in (0, 1):  # seed2 gone
    _finished_run(tmp_path / "runs", f"repvgg/seed{seed}", qat=(rate, 1.0 + seed))
  monkeypatch.setattr(table, "measure", lambda *a, **k: pytest.fail("measured again"))
  monkeypatch.setattr(table, "measure_qat", _no_qat)
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert [records[f"repvgg/seed{s}"].get("qat_epochs") for s in (0, 1, 2)] == [1.0, 2.0, None]
  line = next(x for x in (out / "e10.md").read_text().splitlines() if x.startswith("| repvgg |"))
  assert "| 1, 2, ? | 89.50 +- 0.00 |" in line
  tuned = []

  def measure_qat(workdir, epochs=1.0, calibration=512):
    assert not (workdir / "qat").exists()  # set aside, so not resumed
    tuned.append(workdir.name)
    return {"top1_qat": 89.9, "top1_qat_fp32": 90.0, "qat_lr": rate, "qat_epochs": epochs}

  monkeypatch.setattr(table, "measure_qat", measure_qat)
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=2)
  assert tuned == ["seed0"]  # seed1 was fine-tuned for 2 epochs already
  assert (tmp_path / "runs" / "e10" / "repvgg" / "seed0" / "qat-lr0.0001-e1").is_dir()
  assert records["repvgg/seed0"]["qat_epochs"] == 2 and records["repvgg/seed0"]["top1_qat"] == 89.9
  line = next(x for x in (out / "e10.md").read_text().splitlines() if x.startswith("| repvgg |"))
  assert "| 2, ? |" in line


def test_qat_runs_at_a_share_of_the_runs_base_rate(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"optim": {"learning_rate": 0.05}}))
  assert table.qat_learning_rate(tmp_path) == pytest.approx(table.QAT_LR_SHARE * 0.05)
  assert 0 < table.QAT_LR_SHARE < 0.01  # 0.01 cost 0.75-0.88 points of float32 top-1


def test_a_record_from_a_default_session_is_measured_again_or_kept_as_that(tmp_path, monkeypatch):
  """Records written before the session config was recorded were measured in a default
  onnxruntime session: a run on hand is measured again (its QAT numbers, measured in that
  session too, dropped), a gone run's numbers move to the default-session columns (its
  configured-session cells stay '-')."""
  run = tmp_path / "runs" / "e10" / "acb_online" / "seed1"
  run.mkdir(parents=True)
  (run / "summary.json").write_text("{}")
  out = tmp_path / "results"
  out.mkdir()
  old = {
    f"acb_online/seed{s}": {"top1_fp32": 92.3, "top1_int8": 91.3, "agreement": 97.1} for s in (0, 1)
  }
  old["acb_online/seed1"].update(top1_qat=91.0, qat_lr=1e-4, qat_epochs=1.0)
  (out / "e10.json").write_text(json.dumps(old))
  monkeypatch.setattr(
    table, "measure", lambda w, calibration=512: table.record(_report(0.923, 0.9232))
  )
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert records["acb_online/seed1"]["top1_int8"] == pytest.approx(92.32)
  assert records["acb_online/seed1"]["session"] == SESSION
  assert "top1_qat" not in records["acb_online/seed1"]
  gone = records["acb_online/seed0"]
  assert gone["top1_int8"] is None and gone["top1_int8_default"] == 91.3 and gone["session"] == ""
  line = next(x for x in (out / "e10.md").read_text().splitlines() if x.startswith("| acb_online"))
  assert "| 92.32 (1) | -0.02 (1) | 1.00 (1) |" in line
  # measured once: the next update changes nothing
  monkeypatch.setattr(table, "measure", lambda *a, **k: pytest.fail("measured again"))
  assert table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0) == records


def test_qwix_numbers_of_another_recipe_are_measured_again_on_hand_and_dropped_when_gone(
  tmp_path, monkeypatch
):
  """Records whose JAX route came from another recipe (one without `scheme_jax`: Qwix's own
  averaged ranges): a run on hand is measured again, its QAT numbers kept; a gone run's Qwix
  numbers are dropped, its onnxruntime ones kept; a record whose JAX route was not measured is
  not measured again."""
  out = tmp_path / "results"
  out.mkdir()
  qat = {"top1_qat": 89.7, "top1_qat_fp32": 89.9, "qat_lr": 1e-4, "qat_epochs": 1.0}
  old = {
    f"sn_v2/seed{s}": {**table.record(_report(0.9, 0.89, 0.88, 0.99, 0.97)), **qat}
    for s in (0, 1, 2)
  }
  for s in (0, 1):
    del old[f"sn_v2/seed{s}"]["scheme_jax"]
  old["sn_v2/seed2"].update(top1_jax=None, agreement_jax=None, scheme_jax="")  # Qwix failed
  (out / "e10.json").write_text(json.dumps(old))
  for seed in (0, 2):  # seed1 gone
    run = tmp_path / "runs" / "e10" / "sn_v2" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
  measured = []

  def measure(workdir, calibration=512):
    measured.append(workdir.name)
    return table.record(_report(0.9, 0.89, 0.895, 0.99, 0.99))

  monkeypatch.setattr(table, "measure", measure)
  monkeypatch.setattr(table, "measure_qat", _no_qat)
  records = table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert measured == ["seed0"]
  assert records["sn_v2/seed0"]["top1_jax"] == pytest.approx(89.5)
  assert records["sn_v2/seed0"]["scheme_jax"] == SCHEME_JAX
  # its QAT numbers, measured in the same onnxruntime session, are kept
  assert {k: records["sn_v2/seed0"][k] for k in qat} == qat
  gone = records["sn_v2/seed1"]
  assert gone["top1_jax"] is None and gone["agreement_jax"] is None
  assert gone["top1_int8"] == pytest.approx(89.0)
  line = next(x for x in (out / "e10.md").read_text().splitlines() if x.startswith("| sn_v2 |"))
  assert "| 89.50 (1) | 0.50 (1) |" in line
  table.update(tmp_path / "runs", 10, out, say=lambda _: None, qat_epochs=0)
  assert measured == ["seed0"]  # measured once


def test_measure_qat_fine_tunes_the_run_and_quantizes_it(tmp_path):
  """The run's own config with quantize.qat, its learning rate scaled, constant; then exported
  with --int8: the record's two numbers, in percent; again, through a link to the run (a folder
  of some runs): read back, not trained again."""
  pytest.importorskip("onnxruntime")
  runs.train(tmp_path / "run", conv="acb")
  got = table.measure_qat(tmp_path / "run", epochs=1.0, calibration=16)
  config = json.loads((tmp_path / "run" / "qat" / "config.json").read_text())
  real = str((tmp_path / "run").resolve())
  assert config["quantize"] == {"qat": True, "from_run": real, "calibration": 16}
  base = json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["learning_rate"]
  assert config["optim"]["learning_rate"] == pytest.approx(table.QAT_LR_SHARE * base)
  assert got["qat_lr"] == config["optim"]["learning_rate"]
  assert config["optim"]["schedule"] == "constant"
  assert set(got) == {"top1_qat", "top1_qat_fp32", "qat_lr", "qat_epochs"}
  assert 0 <= got["top1_qat"] <= 100 and got["qat_epochs"] == config["num_epochs"] == 1.0
  summary = json.loads((tmp_path / "run" / "qat" / "summary.json").read_text())
  assert got["top1_qat_fp32"] == pytest.approx(100 * summary["deployed_test_accuracy"])
  (tmp_path / "some").mkdir()
  (tmp_path / "some" / "run").symlink_to(tmp_path / "run")
  assert table.measure_qat(tmp_path / "some" / "run", epochs=1.0, calibration=16) == got
