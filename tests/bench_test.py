"""The benchmark harness: timing plumbing, target verdicts, the guides' copy of the committed
table.

Speed itself is never asserted here (benchmarks are not tests); these only
check that the harness measures what it says and reports it faithfully.
"""

from pathlib import Path

import pytest

from bench import layers, results, run, timing

ROOT = Path(__file__).resolve().parents[1]


def test_every_layer_kind_gives_the_plain_number_of_maps():
  for c in (16, 32, 64):
    for name, make in layers.layer_factories(c).items():
      assert make().out_features == c, name


def test_layer_bench_runs_and_reports_ratios_to_plain():
  rows = layers.bench_layers(
    2, 1, shapes=((8, 16),), kinds=["rotate4", "acu_r1"], log=lambda *_: None
  )
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
  lay = [
    {"kind": "acu_r1", "train_ratio": 1.21},
    {"kind": "acu_r1", "train_ratio": 1.0},
    {"kind": "acu_gather", "train_ratio": 2.0},
  ]
  mod = [
    {"group": "resnet20", "case": "rotate4", "train_ratio": 1.02},
    {"group": "resnet20", "case": "rotate2", "train_ratio": 1.08},
    {"group": "lenet", "case": "model3", "train_ratio": 0.9},
    {"group": "lenet", "case": "model3_cropped", "train_ratio": 0.6},
  ]
  peers = [{"model": "resnet20", "case": "plain", "ours_over_theirs_train": 1.5}]
  got = {t["key"]: (t["measured"], t["met"]) for t in run.evaluate_targets(lay, mod, peers, "cpu")}
  assert got["rotate"] == (1.08, False)  # the worse of the two versions
  assert got["acu_r1"][0] == pytest.approx(1.1) and got["acu_r1"][1]  # geometric mean
  assert got["acu_gather"] == (2.0, True)
  # the default (impl "auto"), not the better of the designs
  assert got["versatile"] == (
    0.9,
    False,
  )
  assert got["acb"] == (None, None)
  assert got["torch"] == (1.5, False)
  assert "versatile_imagenet" not in got  # a GPU-only target
  gpu = {t["key"]: t for t in run.evaluate_targets(lay, mod, peers, "gpu")}
  assert gpu["torch"]["target"] is None and gpu["torch"]["met"] is None  # reported only
  assert gpu["versatile"]["target"] == 1.0 and gpu["versatile"]["met"]  # 0.9 <= 1.0
  assert "report" in run.markdown(
    {
      "device": "d",
      "platform": "gpu",
      "cpu_count": 1,
      "jax_version": "0",
      "batch": 1,
      "model_batch": 1,
      "reps": 1,
      "date": "t",
      "layers": [],
      "models": [],
      "targets": list(gpu.values()),
    }
  )


@pytest.mark.parametrize(
  "name",
  [
    "bench-cpu",
    "bench-data",
    "bench-imagenet-peer",
    "bench-small-maps",
    "bench-kernel-grad-cpu",
    "bench-reparam-cpu",
    "bench-dcls-cpu",
    "bench-int8-cpu",
  ],
)
def test_the_guides_show_the_committed_results(name):
  """Each committed bench table is included by a guide as it is (the site reads the file), and
  no copy of it by hand is left anywhere in the docs or the README."""
  table = ROOT / "results" / f"{name}.md"
  assert table.exists(), f"run python -m bench.{name.removeprefix('bench-').replace('-', '_')}"
  guides = [(p, p.read_text()) for p in sorted((ROOT / "docs" / "guides").glob("*.md"))]
  include = f"```{{include}} ../../results/{name}.md\n"
  assert any(include in text for _, text in guides), f"no guide includes results/{name}.md"
  first_row = table.read_text().strip().split("\n")[-1]
  for path, text in [*guides, (ROOT / "README.md", (ROOT / "README.md").read_text())]:
    assert first_row not in text, f"{path.name} copies results/{name}.md by hand"


def test_reparam_bench_marks_each_target_against_the_measured_ratios():
  from bench import reparam

  def row(case, time, memory):
    return {"case": case, "train_ratio": time, "memory_ratio": memory}

  assert reparam._verdict(row("dbb_online", 1.15, 1.10)).endswith(": met")
  assert reparam._verdict(row("dbb_online", 1.16, 1.0)).endswith("NOT met")
  assert reparam._verdict(row("repvgg_online", 1.0, 1.11)).endswith("NOT met")
  assert reparam._verdict(row("acb", 2.01, 1.0)).endswith("NOT met")
  assert reparam._verdict(row("acb", 1.9, 9.0)).endswith(": met")
  assert reparam._verdict(row("dbb", 9.0, 9.0)) == ""  # offline DBB and RepVGG: reported only
  cases = [c[0] for c in reparam._cases()]
  assert cases[0] == "plain" and {"acb_online", "dbb_online", "repvgg_online"} <= set(cases)


def test_small_maps_bench_times_the_three_forms_and_marks_the_routed_shapes():
  from bench import small_maps

  rows = small_maps.bench(
    [(2, 3, 1, 1, 4, 4, 1), (4, 3, 1, 1, 4, 4, 1)], 2, 1, log=lambda *a, **k: None
  )
  assert [r["routed_to_matmul"] for r in rows] == [True, False]
  for r in rows:
    assert all(
      r[f"{p}_{f}_ms"] > 0 for p in ("forward", "backward") for f in ("xla", "matmul", "conv")
    )
  assert "| 2x2 * |" in small_maps.markdown(
    {
      "device": "cpu",
      "cpu_count": 2,
      "jax_version": "x",
      "batch": 2,
      "reps": 1,
      "date": "d",
      "rows": rows,
    }
  )


def test_kernel_grad_bench_times_both_forms():
  from bench import kernel_grad

  shapes = [("a", 2, 4, (3, 3), 1, 1, 4, 4, 1), ("b", 2, 4, (1, 3), 2, 1, 4, 4, 2)]
  rows = kernel_grad.bench(shapes, 1, log=lambda *a, **k: None)
  assert [r["case"] for r in rows] == ["a", "b"]
  for r in rows:
    assert all(r[f"{g}_{f}_ms"] > 0 for g in ("kernel", "both") for f in ("xla", "ours"))
  table = kernel_grad.markdown(
    {"platform": "cpu", "date": "d", "machine": "m", "jax": "x", "reps": 1, "rows": rows}
  )
  assert "| a | 2 | 4x4 | 3x3 | 1 | 1 | 4->4 | 1 |" in table
  assert "| b | 2 | 4x4 | 1x3 | 2 | 1 | 4->4 | 2 |" in table


def test_bucketed_run_ratio_weights_the_two_radii_by_steps():
  assert run.bucketed_run_ratio(1.0, 2.0) == pytest.approx((10 * 1.0 + 54 * 2.0) / 64)
  assert run.bucketed_run_ratio(None, 2.0) is None


_JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites>
<testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.conv_test" name="test_a"/>
<testcase classname="tests.conv_test" name="test_b">
<failure message="AssertionError: 3e-4 &gt; 1e-5">long</failure></testcase>
<testcase classname="tests.nn_test" name="test_c[x]"><error message="boom"/></testcase>
<testcase classname="tests.nn_test" name="test_d"><skipped message="no torch"/></testcase>
<testcase classname="tests.nn_test" name="test_e"/></testsuite></testsuites>"""


def test_gpu_check_reads_the_test_outcome(tmp_path):
  from bench import gpu_check

  path = tmp_path / "junit.xml"
  path.write_text(_JUNIT)
  outcome = gpu_check.junit_outcome(path)
  assert (outcome["passed"], outcome["failures"], outcome["errors"], outcome["skipped"]) == (
    2,
    1,
    1,
    1,
  )
  assert [f["test"] for f in outcome["failed"]] == [
    "tests/conv_test.py::test_b",
    "tests/nn_test.py::test_c[x]",
  ]
  assert outcome["failed"][0]["message"] == "AssertionError: 3e-4 > 1e-5"
  md = gpu_check.markdown(
    {
      "device": "H100",
      "platform": "gpu",
      "device_count": 1,
      "jax_version": "0",
      "date": "today",
      "workers": 8,
      "test_seconds": 61.0,
      "tests": outcome,
      "bench": None,
    }
  )
  assert "**2 passed, 2 failed**, 1 skipped" in md and "`tests/nn_test.py::test_c[x]` | boom" in md


def test_gpu_check_refuses_to_run_without_a_gpu(capsys, monkeypatch):
  from bench import gpu_check

  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main sets it; restored after
  monkeypatch.setattr(
    gpu_check,
    "_device",
    lambda: {"platform": "cpu", "device": "cpu", "count": 1, "jax_version": "0"},
  )
  assert gpu_check.main(["--skip-bench"]) == 2
  assert "not a GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
  "model, case", [("resnet20", "plain"), ("resnet56", "plain"), ("resnet56", "acb")]
)
def test_torch_peer_is_our_network(model, case):
  """The PyTorch peer has exactly our parameter count (convs, BNs per ACB branch, the
  classifier)."""
  torch = pytest.importorskip("torch")
  from flax import nnx

  import kshapes_jax as K
  from bench import torch_peer

  peer = torch_peer._build(torch, int(model.removeprefix("resnet")), case == "acb")
  ours = K.models.create(model, conv=case, num_classes=10, rngs=nnx.Rngs(0))
  assert sum(p.numel() for p in peer.parameters()) == K.models.count_params(ours)


def test_dcls_bench_marks_each_target_against_the_measured_ratios():
  from bench import dcls

  def row(group, case, ratio, share=None):
    out = {"group": group, "case": case, "mode": "train", "ratio": ratio}
    return out if share is None else {**out, "build_share": share}

  assert dcls._verdict(row("depthwise_17", "dcls", 1.2, 0.10)) == (
    "build <= 10%: met; <= 1.2x plain: met"
  )
  assert dcls._verdict(row("depthwise_17", "dcls_gauss", 1.21, 0.01)).endswith("NOT met")
  assert dcls._verdict(row("dense_5", "dcls", 9.0, 0.11)) == "build <= 10%: NOT met"
  assert dcls._verdict(row("dense_5", "plain", 1.0)) == ""
  assert dcls._verdict({**row("dense_5", "dcls", 1.0, 0.01), "mode": "eval"}) == ""


def test_int8_bench_times_both_files_and_marks_whether_int8_is_faster():
  from bench import int8

  rows = int8.bench(1, networks=(("sn", "plain", {}),), log=lambda *a, **k: None)
  assert [(r["network"], r["batch"]) for r in rows] == [("sn", 1), ("sn", 64)]
  for r in rows:
    assert r["fp32_ms"] > 0 and r["int8_ms"] > 0
    assert r["speedup"] == pytest.approx(r["fp32_ms"] / r["int8_ms"])
    assert r["int8_bytes"] < r["fp32_bytes"] / 2
  record = results.record(
    1, int8.TARGETS, [{**rows[0], "speedup": 1.2}, {**rows[1], "speedup": 0.9}]
  )
  text = int8.markdown(record)
  assert text.count("| yes |") == 1 and text.count("| **no** |") == 1
