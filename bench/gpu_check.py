"""The GPU check: the whole test suite on the GPU, then the GPU benchmarks, in one command.

  python -m bench.gpu_check                 # on a machine with an NVIDIA GPU
  python -m bench.gpu_check --workers 4 --skip-bench

CI has no GPU, so this is how anyone with one verifies what CI cannot: that
the suite passes on the platform our users train on (TF32 convs by default,
cuDNN's algorithms, deterministic resume) and how fast the methods are
there. It writes, under --out (results/ by default):

- `gpu-check.json` / `.md`: the device, JAX version, test counts, the
  failing tests with the end of their messages, and the time taken;
- `bench-gpu.json` / `.md`: `python -m bench.run --platform gpu`.

The tests run as CI runs them (`pytest`, the default markers), with the
environment a user has: no XLA_FLAGS or JAX_DEFAULT_MATMUL_PRECISION of
ours beyond what the test suite itself sets (see tests/conftest.py), only
XLA_PYTHON_CLIENT_PREALLOCATE=false so that the pytest workers can share
the GPU. Exit status: 0 when every test passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _device() -> dict:
  """The default JAX backend of a fresh process, as the tests will see it."""
  code = (
    "import json, jax; d = jax.devices()[0]; "
    "print(json.dumps({'platform': d.platform, 'device': d.device_kind, "
    "'count': jax.device_count(), 'jax_version': jax.__version__}))"
  )
  run = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=REPO
  )
  if run.returncode != 0:
    raise SystemExit(f"error: JAX could not start: {run.stderr.strip().splitlines()[-1:]}")
  return json.loads(run.stdout.strip().splitlines()[-1])


def junit_outcome(path: Path) -> dict:
  """Counts and failures of a pytest JUnit XML report."""
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
  counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
  failed = []
  for suite in suites:
    for key in counts:
      counts[key] += int(suite.get(key, 0))
    for case in suite.iter("testcase"):
      for bad in list(case.findall("failure")) + list(case.findall("error")):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        message = (bad.get("message") or bad.text or "").strip().splitlines()
        failed.append({"test": name, "message": " ".join(message[-3:])[:400]})
  counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
  return {**counts, "failed": failed}


def markdown(result: dict) -> str:
  t = result["tests"]
  lines = [
    f"GPU check on {result['device']} ({result['platform']}, {result['device_count']} device(s)), "
    f"JAX {result['jax_version']}, {result['date']}.",
    "",
    f"Tests (`pytest -n {result['workers']}`, default markers): **{t['passed']} passed, "
    f"{t['failures'] + t['errors']} failed**, {t['skipped']} skipped, in "
    f"{result['test_seconds']:.0f} s.",
    "",
  ]
  if t["failed"]:
    lines += ["| failed test | message |", "|---|---|"]
    lines += [f"| `{f['test']}` | {f['message'].replace('|', '/')} |" for f in t["failed"]]
    lines.append("")
  bench = result.get("bench")
  lines.append(f"Benchmarks: {bench}" if bench else "Benchmarks: not run (--skip-bench).")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--workers",
    type=int,
    default=min(8, os.cpu_count() or 1),
    help="pytest-xdist workers sharing the GPU",
  )
  parser.add_argument("--skip-bench", action="store_true", help="only the tests")
  parser.add_argument(
    "--allow-cpu", action="store_true", help="run even if JAX finds no GPU (a dry run)"
  )
  parser.add_argument("--out", default="results")
  parser.add_argument(
    "--bench-args", default="", help="extra arguments for bench.run, e.g. '--quick'"
  )
  args = parser.parse_args(argv)

  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  device = _device()
  if device["platform"] != "gpu" and not args.allow_cpu:
    print(
      f"error: JAX's default backend is {device['platform']!r} ({device['device']}), not a GPU; "
      "install JAX with CUDA (pip install -U 'jax[cuda13]') or pass --allow-cpu for a dry run",
      file=sys.stderr,
    )
    return 2
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  report = out / "gpu-check-junit.xml"
  print(f"tests on {device['device']} with {args.workers} workers ...", flush=True)
  start = time.perf_counter()
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-p",
      "no:cacheprovider",
      "-n",
      str(args.workers),
      f"--junitxml={report}",
    ],
    cwd=REPO,
    check=False,
  )
  test_seconds = time.perf_counter() - start
  if not report.exists():
    print(
      "error: pytest wrote no report (it failed before running the tests); see its output above",
      file=sys.stderr,
    )
    return 1
  outcome = junit_outcome(report)
  report.unlink()
  result = {
    "platform": device["platform"],
    "device": device["device"],
    "device_count": device["count"],
    "jax_version": device["jax_version"],
    "date": datetime.date.today().isoformat(),
    "workers": args.workers,
    "test_seconds": test_seconds,
    "tests": outcome,
    "bench": None,
  }
  if not args.skip_bench:
    platform = "gpu" if device["platform"] == "gpu" else "cpu"
    bench = subprocess.run(
      [
        sys.executable,
        "-m",
        "bench.run",
        "--platform",
        platform,
        "--out",
        str(out),
        *args.bench_args.split(),
      ],
      cwd=REPO,
      check=False,
    )
    result["bench"] = (
      f"`python -m bench.run --platform {platform}` exit {bench.returncode}; tables in "
      f"bench-{platform}.md"
    )
  (out / "gpu-check.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / "gpu-check.md").write_text(markdown(result))
  print(markdown(result))
  return 0 if outcome["failures"] + outcome["errors"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
