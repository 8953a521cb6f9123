"""results/REPRODUCTION.md from the runs of the reproduction suite (see train/reproduce.py).

  python -m train.reproduce --runs runs/repro --report_only

Every number in the report is read from the runs (summary.json) or computed
from their checkpoints by `train.analyze`; the papers' numbers are the
constants below. Text between the `<!-- notes:start -->` and
`<!-- notes:end -->` markers of an existing report is kept: it is where
people write what the numbers mean.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import kshapes_jax as K
from configs import repro_fmnist
from kshapes_jax.analysis import acnet, versatile
from train import analyze

NOTES = ("<!-- notes:start -->", "<!-- notes:end -->")

# The papers' numbers for each row: (value, what it is). Accuracy in %.
PAPER: dict[str, tuple[float | None, str]] = {
    "sn_v9": (98.95, "MNIST, Table I"), "sn_v4": (98.65, "MNIST, Table I"), "sn_v2": (97.41, "MNIST, Table I"),
    "sn_v4_angles_x1e4": (None, "not in the paper"), "sn_v2_angles_x1e4": (None, "not in the paper"),
    "lenet_baseline": (99.20, "MNIST, Table 2"), "lenet_model1": (99.20, "MNIST, Table 2"),
    "lenet_model2": (99.15, "MNIST, Table 2"), "lenet_model3": (99.22, "MNIST, Table 2"),
    "lenet_v2_model1": (99.18, "MNIST, Table 3"), "lenet_v2_model3": (99.07, "MNIST, Table 3"),
    "acu_baseline": (91.99, "CIFAR-10, Table 2 (error 8.01)"), "acu": (92.67, "CIFAR-10, Table 2 (error 7.33)"),
    "acu_no_warmup": (None, "section 2.4: warm-up worth 0.1-0.2 points"),
    "acu_no_normgrad": (None, "section 2.3: no number given"),
    "acb_baseline": (83.13, "CIFAR-10, Table 1"), "acb": (84.24, "CIFAR-10, Table 1"),
    "acb_hor": (70.70, "ImageNet ResNet-18, Table 4 (base 70.36)"),
    "acb_ver": (70.78, "ImageNet ResNet-18, Table 4 (base 70.36)"),
    "acb_bn_sum": (70.82, "ImageNet ResNet-18, Table 4 (base 70.36)"),
}
# Table 4 of ACNet, ResNet-18 on ImageNet: original, rotate 90, rotate 180, up-down flip.
PAPER_DISTORTED = {
    "acb_baseline": (70.36, 41.00, 41.95, 41.86), "acb_ver": (70.78, 41.61, 42.47, 42.66),
    "acb_hor": (70.70, 42.06, 43.22, 43.05), "acb": (71.14, 42.20, 42.89, 43.10),
    "acb_bn_sum": (70.82, 41.70, 42.92, 42.90),
}
# Versatile filters Tables 2-3 (MNIST LeNet): weights, memory KB, FLOPs.
PAPER_COST = {
    "lenet_baseline": (4.3e5, 1681.6, 22.93e5), "lenet_model1": (4.3e5, 1681.6, 22.93e5),
    "lenet_model2": (2.2e5, 852.0, 12.00e5), "lenet_model3": (2.2e5, 852.0, 12.00e5),
    "lenet_v2_model1": (1.18e5, 460.5, 12.17e5), "lenet_v2_model3": (0.79e5, 309.1, 12.12e5),
}
# (method row, baseline row, the paper's difference in points, what the paper compares)
COMPARISONS = (
    ("sn_v4", "sn_v9", 98.65 - 98.95, "Table I, MNIST"),
    ("sn_v2", "sn_v9", 97.41 - 98.95, "Table I, MNIST"),
    ("sn_v4_angles_x1e4", "sn_v4", None, "ours"),
    ("sn_v2_angles_x1e4", "sn_v2", None, "ours"),
    ("lenet_model1", "lenet_baseline", 0.0, "Table 2, MNIST"),
    ("lenet_model2", "lenet_baseline", -0.05, "Table 2, MNIST"),
    ("lenet_model3", "lenet_baseline", 0.02, "Table 2, MNIST"),
    ("lenet_v2_model1", "lenet_baseline", -0.02, "Table 3, MNIST"),
    ("lenet_v2_model3", "lenet_baseline", -0.13, "Table 3, MNIST"),
    ("acu", "acu_baseline", 0.68, "Table 2, CIFAR-10"),
    ("acu_no_warmup", "acu", -0.15, "section 2.4: 0.1-0.2"),
    ("acu_no_normgrad", "acu", None, "section 2.3, no number"),
    ("acb", "acb_baseline", 1.11, "Table 1, Cifar-quick CIFAR-10"),
    ("acb_hor", "acb", 70.70 - 71.14, "Table 4, ResNet-18 ImageNet"),
    ("acb_ver", "acb", 70.78 - 71.14, "Table 4, ResNet-18 ImageNet"),
    ("acb_bn_sum", "acb", 70.82 - 71.14, "Table 4, ResNet-18 ImageNet"),
)
FAMILIES = (
    ("RotateConv, SN (Ma et al., Table I)", "rotate"),
    ("Versatile filters, LeNet (Wang et al., Tables 2-3)", "versatile"),
    ("Active Convolution Unit, plain network (Jeon and Kim, Table 2)", "acu"),
    ("ACNet, Cifar-quick (Ding et al., Tables 1 and 4)", "acnet"),
)


def _rows(family: str) -> list[str]:
  return [r for r, spec in repro_fmnist.ROWS.items() if spec[0] == family]


def collect(runs: str | Path) -> dict[str, dict[str, Any]]:
  """Per row: the summaries of its finished seeds and the seeds that failed."""
  out = {}
  for row in repro_fmnist.ROWS:
    done, failed = [], []
    for workdir in sorted((Path(runs) / row).glob("seed*")):
      if (workdir / "summary.json").exists():
        done.append(json.loads((workdir / "summary.json").read_text()))
      elif (workdir / "FAILED").exists():
        failed.append(workdir.name)
    out[row] = {"summaries": done, "failed": failed}
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; 0 for one value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _acc(s: dict) -> float:
  return 100 * s["deployed_test_accuracy"]


def _fmt(values: Sequence[float]) -> str:
  if not values:
    return "-"
  m, s = mean_std(values)
  return f"{m:.2f} +- {s:.2f}"


def verdict(method: Sequence[float], baseline: Sequence[float], paper: float | None) -> str:
  """One sentence comparing our difference (method - baseline, mean over seeds) with the paper's."""
  if len(method) < 2 or len(baseline) < 2:
    return "too few seeds to compare"
  m1, s1 = mean_std(method)
  m0, s0 = mean_std(baseline)
  delta = m1 - m0
  se = math.sqrt(s1 ** 2 / len(method) + s0 ** 2 / len(baseline))
  resolved = abs(delta) > 2 * se
  ours = f"ours {delta:+.2f} (2 se = {2 * se:.2f})"
  if paper is None:
    return f"{ours}: " + ("resolved" if resolved else "not resolved at this n")
  if not resolved:
    return f"{ours} vs paper {paper:+.2f}: difference not resolved at this n"
  direction = "better" if delta > 0 else "worse"
  if abs(paper) < 0.1:  # one run each in the paper: a tie
    return f"{ours} vs paper {paper:+.2f} (a tie): ours resolved, {direction}"
  return f"{ours} vs paper {paper:+.2f}: " + ("same direction" if (delta > 0) == (paper > 0) else "OPPOSITE direction")


# The analyses the report reads, per row: (sections, train.analyze options).
ANALYSES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    **{row: (("rotate",), {}) for row in ("sn_v4", "sn_v2", "sn_v4_angles_x1e4", "sn_v2_angles_x1e4")},
    **{row: (("acu",), {}) for row in ("acu", "acu_no_warmup", "acu_no_normgrad")},
    **{row: (("acnet",), {}) for row in ("acb_baseline", "acb")},  # with the pruning curves
    **{row: (("acnet",), {"prune_seeds": 0}) for row in ("acb_hor", "acb_ver", "acb_bn_sum")},
}


def analysis_of(runs: str | Path, row: str, seed: str) -> dict[str, Any] | None:
  """The analyses the report needs of one run (None for rows it reads none of), cached in the run."""
  if row not in ANALYSES:
    return None
  sections, kw = ANALYSES[row]
  return _analysis(Path(runs), row, seed, sections, **kw)


def _analysis(runs: Path, row: str, seed: str, sections: Sequence[str], **kw) -> dict[str, Any]:
  """train.analyze's results for one run, computed once and cached in its analysis/ folder."""
  workdir = runs / row / seed
  cached = workdir / "analysis" / "results.json"
  if cached.exists():
    results = json.loads(cached.read_text())
    wants_curves = "acnet" in sections and kw.get("prune_seeds", 3) > 0
    if set(sections) <= set(results.get("sections", [])) and not (wants_curves and not results["acnet"]["pruning"]):
      return results
  return analyze.analyze(workdir, sections=sections, **kw)


def _seeds(runs: Path, row: str) -> list[str]:
  return sorted(p.name for p in (runs / row).glob("seed*") if (p / "summary.json").exists())


def _copy(src: Path, dst: Path) -> str:
  dst.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, dst)
  return dst.name


def write_report(runs: str | Path, path: str | Path) -> str:
  """Writes the reproduction report to `path` and its figures next to it (folder `repro/`)."""
  runs, path = Path(runs), Path(path)
  figures = path.parent / "repro"
  figures.mkdir(parents=True, exist_ok=True)
  found = collect(runs)
  notes = ""
  if path.exists():
    old = path.read_text()
    if NOTES[0] in old and NOTES[1] in old:
      notes = old[old.index(NOTES[0]) + len(NOTES[0]):old.index(NOTES[1])]
  seconds = sum(s.get("seconds_total", 0) for f in found.values() for s in f["summaries"])
  lines = [
      "# Reproduction report", "",
      "Made by `python -m train.reproduce --runs runs/repro` (every run, then this file) on "
      f"{time.strftime('%Y-%m-%d')}; the runs took {seconds / 60:.0f} min of training in total "
      f"({sys.platform}, CPU). One row, one seed: "
      "`python -m train.main --config configs/repro_fmnist.py:row=ROW,seed=S --workdir runs/repro/ROW/seedS`; "
      "one run's figures: `python -m train.analyze --workdir runs/repro/ROW/seedS`.", "",
      "Data: Fashion-MNIST (Debian's dataset-fashion-mnist: 60k train, 10k test, 28x28 grey), the only real "
      "dataset these machines have offline. The papers use MNIST, CIFAR and ImageNet with schedules 10-100x longer, "
      "so the absolute accuracies are NOT comparable to the papers'; what is compared is each method against "
      "its baseline under the same short recipe (configs/repro_fmnist.py), over seeds. "
      "Accuracy is that of the DEPLOYED network (every shaped conv made plain; the trained one agreed on every "
      "prediction unless a row says otherwise). Mean +- sample std over seeds; a difference counts as resolved "
      "when it exceeds two standard errors.", "",
      NOTES[0] + notes + NOTES[1], "",
  ]
  for title, family in FAMILIES:
    rows = _rows(family)
    table = []
    for row in rows:
      sums = found[row]["summaries"]
      accs = [_acc(s) for s in sums]
      paper, where = PAPER[row]
      agree = min((s["deployed_prediction_agreement"] or 0.0 for s in sums), default=float("nan"))
      table.append((f"`{row}`", f"{sums[0]['parameters']:,}" if sums else "-",
                    f"{sums[0]['deployed_parameters']:,}" if sums else "-", _fmt(accs),
                    f"{len(sums)}" + (f" ({len(found[row]['failed'])} diverged)" if found[row]["failed"] else ""),
                    "-" if paper is None else f"{paper:.2f}", where,
                    f"{100 * agree:.2f}" if sums else "-",
                    f"{np.mean([s['seconds_total'] for s in sums]) / 60:.1f}" if sums else "-"))
    lines += [f"## {title}", "",
              *analyze.markdown_table(("row", "params", "deployed params", "test acc. (%)", "seeds", "paper (%)", "paper's setting",
                       "deployed = trained (%)", "min / run"), table), ""]
    comparisons = [c for c in COMPARISONS if c[0] in rows]
    lines += analyze.markdown_table(("method vs baseline", "difference (points)", "paper's setting"),
                    [(f"`{m}` - `{b}`", verdict([_acc(s) for s in found[m]["summaries"]],
                                                [_acc(s) for s in found[b]["summaries"]], p), where)
                     for m, b, p, where in comparisons]) + [""]
    lines += globals()[f"_section_{family}"](runs, figures, found)
  text = "\n".join(lines) + "\n"
  path.write_text(text)
  return text


def _section_rotate(runs: Path, figures: Path, found) -> list[str]:
  lines = ["Angles: how far each kernel's line turned from its initial angle (train.analyze, deg), "
           "mean over layers and seeds:", ""]
  table = []
  for row in ("sn_v4", "sn_v2", "sn_v4_angles_x1e4", "sn_v2_angles_x1e4"):
    turned = [np.mean([v["turned_mean_deg"] for v in analysis_of(runs, row, s)["rotate"].values()])
              for s in _seeds(runs, row)]
    table.append((f"`{row}`", _fmt(turned) if turned else "-"))
  lines += analyze.markdown_table(("row", "mean turn (deg)"), table) + [""]
  for row in ("sn_v4", "sn_v4_angles_x1e4"):
    seeds = _seeds(runs, row)
    if seeds:
      src = runs / row / seeds[0] / "analysis"
      lines += [f"`{row}` {seeds[0]}, angle histograms per layer and Fig. 5 of the last layer:", "",
                f"![](repro/{_copy(src / 'rotate_histograms.png', figures / f'rotate_hist_{row}.png')})",
                f"![](repro/{_copy(src / 'rotate_fig5.png', figures / f'rotate_fig5_{row}.png')})", ""]
  return lines


def _section_versatile(runs: Path, figures: Path, found) -> list[str]:
  lines = ["Cost of the models as built (Proposition 1; `kshapes_jax.analysis.versatile.cost_table`), "
           "next to Tables 2-3:", ""]
  table = []
  for row in _rows("versatile"):
    _, model_name, conv, model_kwargs, _, _ = repro_fmnist.ROWS[row]
    model = K.models.create(model_name, conv=conv, **model_kwargs)
    total = versatile.cost_table(model, (28, 28, 1))[-1]
    pw, pm, pf = PAPER_COST[row]
    table.append((f"`{row}`", f"{total['weights']:,}", f"{pw:.3g}", f"{total['memory_kb']:.1f}", f"{pm}",
                  f"{total['multiplications']:,}", f"{pf:.4g}"))
  lines += analyze.markdown_table(("row", "weights", "paper", "memory (KB)", "paper", "multiplications", "paper"), table) + [""]
  panels = []
  for row, label in (("lenet_baseline", "baseline"), ("lenet_model3", "Model 3")):
    seeds = _seeds(runs, row)
    if seeds:
      run = analyze.load_run(runs / row / seeds[0])
      for name, mosaic in analyze.first_layer_panels(run.model, run.dataset.image_shape):
        panels.append((f"{label}: {name}", mosaic))
  if panels:
    analyze.plot_filters(panels, figures / "versatile_fig3.png", "first-layer filters, seed 0 (Fig. 3)")
    lines += ["![](repro/versatile_fig3.png)", ""]
  return lines


def _section_acu(runs: Path, figures: Path, found) -> list[str]:
  lines = ["Learned positions: extent max(|alpha|, |beta|) per ACU layer (px; 1 = the 3x3 lattice), "
           "mean +- std over seeds:", ""]
  table, header = [], None
  for row in ("acu", "acu_no_warmup", "acu_no_normgrad"):
    per_seed = [analysis_of(runs, row, s)["acu"]["extent"] for s in _seeds(runs, row)]
    if not per_seed:
      continue
    header = list(per_seed[0])
    table.append((f"`{row}`", *(_fmt([p[name] for p in per_seed]) for name in header)))
  if header:
    lines += analyze.markdown_table(("row", *header), table) + [""]
  seeds = _seeds(runs, "acu")
  if seeds:
    src = runs / "acu" / seeds[0] / "analysis"
    lines += ["`acu` seed 0: learned positions (Fig. 5) and their movement (Fig. 6):", "",
              f"![](repro/{_copy(src / 'acu_positions.png', figures / 'acu_positions.png')})",
              f"![](repro/{_copy(src / 'acu_movement.png', figures / 'acu_movement.png')})", ""]
  return lines


def _initial_magnitude(workdir: Path) -> np.ndarray:
  """A of a run's deployed model at initialisation (its config's seed, BN statistics at their start)."""
  deployed = K.deploy(analyze.load_run(workdir).initial)
  return acnet.magnitude_matrix([layer.kernel[...] for _, layer in acnet.square_convs(deployed)])


def _section_acnet(runs: Path, figures: Path, found) -> list[str]:
  lines = []
  matrices, initial, curves, sparsities = {}, {}, {}, None
  for row in ("acb_baseline", "acb"):
    results = [analysis_of(runs, row, s) for s in _seeds(runs, row)]
    if not results:
      continue
    matrices[row] = np.mean([r["acnet"]["magnitude_matrix"] for r in results], axis=0)
    initial[row] = np.mean([_initial_magnitude(runs / row / s) for s in _seeds(runs, row)], axis=0)
    sparsities = results[0]["acnet"]["sparsities"]
    curves[row] = {region: np.concatenate([np.asarray(r["acnet"]["pruning"][region], np.float64) for r in results])
                   for region in acnet.REGIONS}
    analyze.plot_magnitude(matrices[row], figures / f"acnet_magnitude_{row}.png",
                           f"A, {row}, mean of {len(results)} seeds")
    analyze.plot_pruning(sparsities, curves[row], figures / f"acnet_pruning_{row}.png",
                         f"{row}: {len(results)} seeds x masks, {results[0]['acnet']['prune_examples']} test images")
  if matrices:
    lines += ["Average kernel magnitude matrix A of the deployed 5x5 layers (eq. 9-10), mean over seeds; "
              "the paper's Fig. 6 (ResNet-56, 3x3): centre 1.000, skeleton above 0.666 and corners below 0.400 "
              "for ACNet.", ""]
    for row, m in matrices.items():
      for when, a in (("trained", m), ("at initialisation (same seeds)", initial[row])):
        k = a.shape[0]
        skeleton = acnet.skeleton_mask(k)
        lines.append(f"- `{row}` {when}: centre {a[k // 2, k // 2]:.3f}, skeleton mean {a[skeleton].mean():.3f}, "
                     f"other positions mean {a[~skeleton].mean():.3f}, corners "
                     f"{np.mean([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]]):.3f}")
    lines += ["", " ".join(f"![](repro/acnet_magnitude_{row}.png)" for row in matrices), ""]
    lines += ["Accuracy (%) after pruning a fraction of every 5x5 layer's weights at random in a region "
              "(Fig. 5), mean +- std over seeds x 3 masks:", ""]
    table = []
    for row, c in curves.items():
      for region, acc in c.items():
        table.append((f"`{row}`", region, *("-" if np.all(np.isnan(col)) else
                                            f"{100 * np.nanmean(col):.1f} +- {100 * np.nanstd(col):.1f}"
                                            for col in acc.T)))
    lines += analyze.markdown_table(("row", "region", *(f"{100 * s:g}%" for s in sparsities)), table) + [""]
    lines += [" ".join(f"![](repro/acnet_pruning_{row}.png)" for row in curves), ""]
  table = []
  for row in ("acb_baseline", "acb", "acb_hor", "acb_ver", "acb_bn_sum"):
    results = [analysis_of(runs, row, s) for s in _seeds(runs, row)]
    if results:
      table.append((f"`{row}`", *(_fmt([100 * r["acnet"]["distorted"][k] for r in results])
                                  for k in acnet.DISTORTIONS),
                    " / ".join(f"{v:.2f}" for v in PAPER_DISTORTED[row])))
  if table:
    lines += ["Accuracy (%) on the whole test set rotated or flipped (Table 4; the paper's numbers are ResNet-18 "
              "on ImageNet, trained with left-right flips; ours had no augmentation):", "",
              *analyze.markdown_table(("row", *acnet.DISTORTIONS, "paper: original / 90 / 180 / flip"), table), ""]
  return lines
