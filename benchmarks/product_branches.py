"""What each expert of a product-of-experts run contributes, paired within the run: the held-out
predictions of each fold of a kept ``quality.py --folds`` comparison run with
``model.metadata_fusion="product"``, split into its two classifiers and scored.

  python benchmarks/quality.py pad_ufes_metadata --folds 5 --budget 240 \
      --set model.metadata_fusion=product ... --keep /var/tmp/pad_product
  python benchmarks/product_branches.py /var/tmp/pad_product

The product's logits are the image classifier's plus the metadata classifier's
(``flaxderm.models.fusion``), and each is trained on its own loss, so the image branch is an
image-only model trained by the same recipe, on the same batches, in the same run: it gets no
gradient from the metadata. Product against image branch is therefore the image + metadata vs
image-only pair without the spread between two training runs of the image model (on PAD-UFES-20's
522 images, two runs of one image recipe differ by up to 0.06 balanced accuracy on a fold,
benchmarks/RESULTS.md). Scored without test-time augmentation, so that the split is exact: the
image branch's log-probabilities are the product's minus the metadata logits, up to a constant per
case. Prints, and appends to RESULTS.md, the rows and ``quality.paired_table``'s paired statistics
(image branch -> product, and metadata branch alone).
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

import environment  # benchmarks/environment.py, beside this script
import quality
from flaxderm.data import pipeline
from flaxderm.models import fusion
from flaxderm.tools import run as run_lib

PACKAGES = ("jax", "scikit-learn")
SYSTEMS = ("image branch", "metadata branch", "product")


def branch_logits(workdir: Path
                  ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray], run_lib.Member]:
  """(held-out labels, their case ids, each of ``SYSTEMS``' log-probabilities up to a constant
  per case, the restored run) of the product run in ``workdir``, on its evaluation split,
  without TTA."""
  run = run_lib.load_run(workdir, tta="none", calibrated=False)
  if run.cfg.model.metadata_fusion != "product" or not run.metadata_fields:
    raise SystemExit(f"{workdir}: not a model.metadata_fusion='product' run with data.metadata")
  member = run.members[0]
  head = member.state.params[fusion.METADATA_HEAD]
  kernel, bias = np.asarray(head["kernel"]), np.asarray(head["bias"])
  labels, ids, product, metadata = [], [], [], []
  for batch in pipeline.make_eval_iterator(member.data_cfg, global_batch_size=32):
    valid = np.asarray(batch["valid"]) > 0
    probs = member.infer(member.state, jnp.asarray(batch["image"]),
                         jnp.asarray(batch["metadata"]))
    labels.append(np.asarray(batch["label"])[valid])
    ids += [str(i) for i, v in zip(batch["id"], valid) if v]
    product.append(np.log(np.maximum(np.asarray(probs, np.float64)[valid], 1e-30)))
    metadata.append(np.asarray(batch["metadata"])[valid] @ kernel + bias)
  product_logits, metadata_logits = np.concatenate(product), np.concatenate(metadata)
  return (np.concatenate(labels), ids,
          {"image branch": product_logits - metadata_logits, "metadata branch": metadata_logits,
           "product": product_logits}, member)


def scored(labels: np.ndarray, ids: list[str], logits: np.ndarray, step: int) -> dict:
  """A ``quality.py`` row: balanced accuracy, accuracy, macro AUC, steps, per-case predictions
  and their ids (so that its pooled bootstrap pairs the cases)."""
  probs = softmax(logits, axis=1)
  predictions = probs.argmax(axis=1)
  return {"balanced accuracy": balanced_accuracy_score(labels, predictions),
          "accuracy": accuracy_score(labels, predictions),
          "macro AUC": roc_auc_score(labels, probs, multi_class="ovr",
                                     labels=range(probs.shape[1])),
          "steps": step, "cases": (labels, predictions), "case ids": ids}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("keep", help="the --keep folder of a quality.py --folds run of the product")
  p.add_argument("--comparison", default="pad_ufes_metadata", choices=sorted(quality.COMPARISONS))
  p.add_argument("--folds", type=int, default=5)
  p.add_argument("--no-append", action="store_true")
  args = p.parse_args(argv)
  comparison = quality.COMPARISONS[args.comparison]
  rows = []
  for fold in range(args.folds):
    workdir = Path(args.keep) / f"flaxderm_{fold}"
    if not (workdir / "config.json").is_file():
      raise SystemExit(f"{workdir} holds no run: give the --keep folder of a quality.py --folds run")
    labels, ids, logits, member = branch_logits(workdir)
    budget = member.cfg.budget_s or float("nan")  # images/s needs a wall budget
    rows += [(system, fold, scored(labels, ids, logits[system], member.step))
             for system in SYSTEMS]
  text = (f"\n## Product of experts, branch by branch: the runs of `{args.keep}` "
          f"({datetime.date.today().isoformat()})\n\n"
          f"- machine: {environment.cpu()}; {environment.versions(PACKAGES)}\n"
          f"- command: `python benchmarks/product_branches.py {shlex.join(argv)}`; held-out folds "
          "scored without TTA\n\n"
          + quality.table(comparison, rows, budget) + "\n\n"
          + quality.paired_table(comparison, rows, "image branch", "product") + "\n\n"
          + quality.paired_table(comparison, rows, "image branch", "metadata branch") + "\n")
  environment.record(text, append=not args.no_append)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
