"""PAD-UFES-20 (6 diagnoses, smartphone clinical images) from the images alone, with ImageNet
EfficientNet-Lite0 on a 2-core CPU: the image-only twin of ``pad_ufes20_metadata_cpu``.

    python launch.py pad_ufes20_cpu --config.data.manual_dir=../shared/data
    python launch.py pad_ufes20_cpu --folds 5 --config.data.manual_dir=../shared/data

The ``isic2018_task3_lite0_cpu`` recipe (192 px centred square, AdamW 3e-4 with a cosine decay
over a 900 s budget, batch 16, class-weighted cross-entropy, flips and 90-degree rotations,
horizontal-flip test-time augmentation, the last parameters scored; its decisions the plain
argmax: the logit adjustment that helps on ISIC's skewed prior did not on these folds) on
PAD-UFES-20, split by
patient (``group`` is the patient id: ``hashed`` holds out about 30% of the patients, ``--folds``
makes patient-grouped folds). Its subgroup audit at 300 s is in benchmarks/RESULTS.md.
"""
from ._lite0_cpu import pad_ufes20, runlocal


def get_config(arg=None):
  c = pad_ufes20()
  if arg == "runlocal":
    runlocal(c)
  return c
