"""U-Net (ResNet-18 encoder, from scratch) on PH2, sized for a 2-core CPU: 20 minutes of training.

    python launch.py ph2_unet_cpu --config.data.manual_dir=../shared/data/PH2Dataset

PH2 (the paper-004 validation set) split by case as the PyTorch reference run does
(``data.split="hashed"``: about 30% of cases held out), 128 px (stretched, as the reference),
normalised by the training set's mean/std, flips and 90-degree rotations. smp-style U-Net on a
ResNet-18 encoder, Dice + cross-entropy, Adam 1e-3 with a cosine decay laid over a 1200 s
wall-clock budget, batch 8. The held-out cases are the score, so the last parameters are kept
(choosing the best on them would flatter it). Reference: the PyTorch run
``ph2_unet_resnet18.py`` that ``benchmarks/quality.py ph2`` sets beside it.
"""
from flaxderm.train import config as config_lib

from ._ph2 import recipe


def get_config(arg=None):
  c = recipe()
  if arg == "runlocal":
    config_lib.runlocal(c, encoder_kwargs={"depths": (1, 1, 1, 1)})
  return c
