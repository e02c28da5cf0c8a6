"""Runs a reference script of ../shared/reference, unchanged, on one flaxderm fold.

    python benchmarks/reference_fold.py SCRIPT GROUPS.json RECORD.json -- DATA_DIR --budget S

The reference scripts choose their held-out lesions with ``common.is_validation(key)``; this
wrapper replaces that function by membership in GROUPS.json (the lesion keys of flaxderm's fold,
``flaxderm.data.splits.split_groups``) before the script imports it, so both systems hold out
the same lesions. It also records the labels and predictions the script passes to scikit-learn's
``balanced_accuracy_score`` into RECORD.json (classification scripts), for pooled statistics. It
fails if some of the fold's lesions never reached the script (a key mismatch would silently
change the split).

GROUPS ``-`` (``GIVEN``): the script is given its held-out folder (``--test-root``, as
``quality.py --heldout-folds`` runs it), so its split is left alone and only the record is kept.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

# GROUPS of a script that is given its held-out folder: nothing to replace.
GIVEN = "-"


def main(argv: list[str]) -> int:
  if "--" not in argv or argv.index("--") != 3:
    print(__doc__, file=sys.stderr)
    return 2
  script, groups_file, record_file = argv[:3]
  given = groups_file == GIVEN
  groups = set() if given else {str(g) for g in json.loads(Path(groups_file).read_text())}
  sys.path.insert(0, str(Path(script).resolve().parent))
  import common  # pylint: disable=g-import-not-at-top  (the reference's own module)
  import sklearn.metrics  # pylint: disable=g-import-not-at-top

  seen: set[str] = set()

  def in_fold(key) -> bool:
    inside = str(key) in groups
    if inside:
      seen.add(str(key))
    return inside

  balanced_accuracy = sklearn.metrics.balanced_accuracy_score

  def recording(y_true, y_pred, **kwargs):
    Path(record_file).write_text(json.dumps({"label": [int(v) for v in y_true],
                                             "prediction": [int(v) for v in y_pred]}))
    return balanced_accuracy(y_true, y_pred, **kwargs)

  if not given:
    common.is_validation = in_fold
  sklearn.metrics.balanced_accuracy_score = recording
  sys.argv = [script, *argv[4:]]
  runpy.run_path(script, run_name="__main__")
  if given:
    return 0
  print(f"FOLD held-out lesions {len(seen)} of {len(groups)}", flush=True)
  if seen != groups:
    missing = sorted(groups - seen)
    print(f"{len(missing)} of the fold's lesions never reached {script} (e.g. {missing[:3]}): "
          f"its keys differ from flaxderm's groups", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
