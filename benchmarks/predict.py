"""Prediction throughput of ``launch.py predict`` on the PH2 images, for the PH2 experiment's model.

Throughput does not depend on how long the model trained, so by default the PH2 experiment
(``ph2_segmentation_cpu``: EfficientNet-Lite0 U-Net, 128 px, hflip test-time augmentation) is
trained for two steps into a temporary folder, then every PH2 dermoscopic image is predicted at
each batch size, decoding, preparation, the network, resizing back to the image's size and writing
the mask and overlay included (the command's own images/s line).

  python benchmarks/predict.py                              # appended to RESULTS.md
  python benchmarks/predict.py --workdir RUN --batch-sizes 1,8 --no-append

../shared/data/PH2Dataset holds PH2 at half the original resolution (about 383x287 instead of
768x560), which the table states.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image

import environment  # benchmarks/environment.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
PH2 = ROOT.parent / "shared" / "data" / "PH2Dataset"
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "opencv-python-headless")


def _train_briefly(workdir: Path, manual_dir: Path) -> None:
  from flaxderm import cli  # pylint: disable=g-import-not-at-top

  code = cli.main(["ph2_segmentation_cpu", f"--config.data.manual_dir={manual_dir}",
                   "--config.data.skip_bad_examples=True", "--config.budget_s=0",
                   "--config.num_steps=2", "--config.num_epochs=0",
                   "--config.progress_bar=False", "--workdir", str(workdir)])
  if code:
    raise SystemExit(f"training the PH2 experiment failed (exit {code})")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="a trained run (default: the PH2 experiment, 2 steps)")
  parser.add_argument("--manual-dir", default=str(PH2), help="the PH2 folder")
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--repeats", type=int, default=3, help="passes per batch size (median)")
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args(argv)
  images = sorted(glob.glob(str(Path(args.manual_dir) / "PH2 Dataset images" / "*" /
                                "*_Dermoscopic_Image" / "*.bmp")))
  if not images:
    raise SystemExit(f"no PH2 images under {args.manual_dir}")
  sizes = sorted({Image.open(p).size for p in images})
  from flaxderm.tools import predict  # pylint: disable=g-import-not-at-top

  command = "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
  rows = []
  with tempfile.TemporaryDirectory(prefix="flaxderm-predict-bench-") as scratch:
    workdir = Path(args.workdir) if args.workdir else Path(scratch) / "run"
    if not args.workdir:
      _train_briefly(workdir, Path(args.manual_dir))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
      rates = []
      for repeat in range(args.repeats):
        out = Path(scratch) / f"out-{batch}-{repeat}"
        summary = predict.predict_files(workdir, images, out, batch_size=batch, progress=False)
        rates.append(summary["images_per_s"])
      rows.append((batch, statistics.median(rates), min(rates), max(rates)))
      print(f"batch {batch}: {rows[-1][1]:.2f} images/s ({len(images)} images)", flush=True)
  lines = [
      f"## Predict throughput (PH2 experiment), {datetime.date.today().isoformat()}", "",
      f"- command: `{command}`",
      f"- machine: {environment.cpu()}; versions: {environment.versions(PACKAGES)}",
      f"- {len(images)} PH2 images of {sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}"
      " (../shared/data keeps PH2 at half resolution); model: ph2_segmentation_cpu (Lite0 U-Net, "
      "128 px, hflip TTA); per image: decode, prepare, network, probabilities resized to the "
      "image, mask PNG + overlay JPEG written; median of "
      f"{args.repeats} passes (each loads the run and compiles: counted)", "",
      "| batch | images/s (median) | min | max |", "|---:|---:|---:|---:|",
      *(f"| {b} | {m:.2f} | {lo:.2f} | {hi:.2f} |" for b, m, lo, hi in rows), ""]
  environment.record("\n".join(lines), append=not args.no_append)


if __name__ == "__main__":
  main()
