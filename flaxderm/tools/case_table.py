"""The per-case table of an evaluation (``RUN/evaluation/cases.csv``, ``flaxderm.tools.evaluate``)
as weighted statistics and subgroups (``flaxderm.subgroups``), shared by ``launch.py evaluate
--by`` and ``launch.py compare``: a row per case, its scores (segmentation: per-image columns;
classification: ``label``, ``prediction``, ``prob/<class>``), then its ``group`` (the split's
grouping unit) and clinical fields (``flaxderm.data.clinical``).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from flaxderm import subgroups
from flaxderm.data import clinical

CLASSIFICATION_METRICS = ("balanced_accuracy", "accuracy", "auc/macro_ovr", "ece")
# Columns that describe a case rather than score it.
DESCRIBING = frozenset({"id", "fold", "group", *clinical.FIELDS})


def statistics(rows: list[dict[str, str]], task: str, names: Sequence[str],
               classes: Sequence[str], malignant: Sequence[str] = ()
               ) -> dict[str, subgroups.Statistic]:
  """``weights (S, N) -> (S,)`` per metric of ``names`` (``flaxderm.subgroups``): the metric of the
  rows with case i counted ``weights[:, i]`` times (a bootstrap resample, or all ones for the
  observed value). Segmentation: the mean of a per-case column; classification: a statistic of
  ``subgroups.classification_statistics``, ``classes`` naming the class indices (the ``prob/``
  columns' order) and ``malignant`` the malignant ones."""
  if task == "segmentation":
    for name in names:
      if name not in rows[0] or name in DESCRIBING:
        columns = [k for k in rows[0] if k not in DESCRIBING]
        raise ValueError(f"--metric {name!r}: not a per-case column; expected one of {columns}")
    return {name: subgroups.mean(np.array([float(row[name]) for row in rows]))
            for name in names}
  known = set(CLASSIFICATION_METRICS) | ({subgroups.SENSITIVITY, subgroups.SPECIFICITY}
                                         if malignant else set())
  for name in names:
    if name not in known:
      raise ValueError(f"--metric {name!r}: for classification one of "
                       f"{CLASSIFICATION_METRICS}")
  classes = list(classes)
  labels = np.array([classes.index(row["label"]) for row in rows])
  predictions = np.array([classes.index(row["prediction"]) for row in rows])
  probabilities = None
  if {"auc/macro_ovr", "ece"} & set(names):
    probabilities = np.array([[float(row[f"prob/{c}"]) for c in classes] for row in rows])
  return subgroups.classification_statistics(
      labels, predictions, probabilities, [classes.index(c) for c in malignant], names)


def field_groups(rows: Sequence[dict[str, str]], field: str,
                 age_bands: Sequence[float] = subgroups.AGE_BANDS
                 ) -> tuple[np.ndarray, list[str]]:
  """(each case's group of clinical ``field``, the groups in order; ``subgroups.group_labels``)
  from the per-case table: ages in ``age_bands``."""
  check_fields([field])
  if field not in rows[0]:
    carried = [k for k in rows[0] if k in clinical.FIELDS]
    raise ValueError(f"--by {field}: the cases carry no such field; they carry {carried}"
                     + ("" if carried else " (scored before the cases carried their clinical "
                        "fields? evaluate the run again)"))
  if clinical.FIELDS[field].kind == clinical.NUMBER:
    return subgroups.group_labels([float(row[field] or "nan") for row in rows], age_bands)
  return subgroups.group_labels([row[field] for row in rows])


def check_fields(fields: Sequence[str]) -> None:
  """ValueError unless ``fields`` are clinical fields a subgroup audit can group by: categories,
  text, or age (in bands)."""
  clinical.check_fields(tuple(fields), "--by")
  numbers = [f for f in fields if clinical.FIELDS[f].kind == clinical.NUMBER and f != "age"]
  if numbers:
    raise ValueError(f"--by {','.join(numbers)}: numbers other than age have no bands to group "
                     "them by")


def render_table(rows: list[list[str]]) -> str:
  """Rows of cells as aligned text: the first column to the left, the others to the right."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def parse_numbers(text: str) -> tuple[float, ...]:
  """``--age-bands`` "0,30,45" as numbers."""
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}"
                                     ) from None


def add_group_arguments(parser: argparse.ArgumentParser, *, by_help: str) -> None:
  """The options of a subgroup analysis (compare and evaluate)."""
  parser.add_argument("--by", help=by_help)
  parser.add_argument("--age-bands", type=parse_numbers, default=subgroups.AGE_BANDS,
                      help="edges of the age bands [b0,b1), ..., b_last+ (default "
                      f"{','.join(f'{b:g}' for b in subgroups.AGE_BANDS)})")
  parser.add_argument("--min-cases", type=int, default=subgroups.MIN_CASES,
                      help="smaller groups are reported as too small, not scored (default "
                      f"{subgroups.MIN_CASES})")
