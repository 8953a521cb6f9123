"""Every JSON file the training system writes, read back damaged: truncated, garbage, empty, not
text, foreign JSON and hand-edited versions each give one error line naming the file."""

import json
import shutil
from pathlib import Path

import pytest

from train import json_files
from train.data import records
from train.reproduce import ledger
from train.trainer.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "tests" / "data" / "run_before_redesign"
LEDGER = REPO / "results" / "runs"


def _damaged(text: str, how: str) -> bytes:
  return {
    "truncated": text[: len(text) - 3].encode(),  # inside the last value, or the last line
    "garbage": b"\x00\x17not json at all {{{",
    "empty": b"",
    "not text": b"\xff\xfe\x00\x81" * 8,
    "foreign": json.dumps(["a", "list", "where", "an", "object", "was"]).encode(),
    "edited": json.dumps({"unexpected": 1}).encode(),
  }[how]


DAMAGE = ["truncated", "garbage", "empty", "not text", "foreign", "edited"]


def _readers(tmp_path: Path):
  """(the file, a call that reads it the way the project does), for each file we write."""
  run = tmp_path / "run"
  shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("checkpoints"))
  rundir = RunDir(run)
  rows = sorted((LEDGER / "e10").iterdir())
  aggregated = next(p.name for p in rows if (p / "aggregate.json").exists())
  seeded = next(p.name for p in rows if (p / "seed0.json").exists())
  ledger_copy = tmp_path / "ledger"
  for row in {aggregated, seeded}:
    shutil.copytree(LEDGER / "e10" / row, ledger_copy / "e10" / row)
  prepared = tmp_path / "prepared"
  prepared.mkdir()
  split = records.SplitInfo(examples=1, shards=())
  meta = records.Metadata(
    "d", ("a", "b"), {"train": split, "test": split}, (0.5,) * 3, (0.2,) * 3, None, 90, "x"
  )
  records.write_metadata(prepared, meta)
  return {
    "config.json": (rundir.config_path, rundir.read_config),
    "summary.json": (rundir.summary_path, rundir.read_summary),
    "metrics.jsonl": (rundir.metrics_path, rundir.read_metrics),
    "aggregate.json": (
      ledger_copy / "e10" / aggregated / "aggregate.json",
      lambda: ledger.read_aggregate(ledger_copy, aggregated, 10),
    ),
    "seed0.json": (
      ledger_copy / "e10" / seeded / "seed0.json",
      lambda: ledger.seeds(ledger_copy, seeded, 10),
    ),
    "metadata.json": (prepared / "metadata.json", lambda: records.read_metadata(prepared)),
  }


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize(
  "name",
  ["config.json", "summary.json", "metrics.jsonl", "aggregate.json", "seed0.json", "metadata.json"],
)
def test_a_damaged_file_of_ours_is_one_error_naming_it(tmp_path, name, how):
  path, read = _readers(tmp_path)[name]
  original = path.read_text()
  read()  # intact, it reads
  path.write_bytes(_damaged(original, how))
  try:
    read()
  except (ValueError, FileNotFoundError) as e:
    message = str(e)
    assert str(path) in message, message
    assert "\n" not in message
  else:
    # only where the file's readers take any JSON value (a seed record, a config laid over the
    # defaults and checked by settings.read, a metrics line) may a foreign or edited file read;
    # an empty metrics.jsonl is a run with no epoch logged yet (a resume rewrites it)
    assert (
      how in ("foreign", "edited") and name in ("seed0.json", "config.json", "metrics.jsonl")
    ) or (how == "empty" and name == "metrics.jsonl")


def test_read_names_the_line_of_a_cut_json_lines_file(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"epoch": 1}\n{"epoch": 2, "tra')
  with pytest.raises(json_files.JsonFileError, match=r"m.jsonl line 2 is not valid JSON"):
    json_files.read_lines(path)
