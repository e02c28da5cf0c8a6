"""U-Net (ResNet-18 encoder, from scratch) on PH2, sized for a 2-core CPU: 20 minutes of training.

    python launch.py ph2_unet_cpu --config.data.manual_dir=../shared/data/PH2Dataset

PH2 (the paper-004 validation set) split by case as the PyTorch reference run does
(``data.split="hashed"``: about 30% of cases held out), 128 px (stretched, as the reference),
normalised by the training set's mean/std, flips and 90-degree rotations. smp-style U-Net on a
ResNet-18 encoder, Dice + cross-entropy, Adam 1e-3 with a cosine decay laid over a 1200 s
wall-clock budget, batch 8. The held-out cases are the score, so the last parameters are kept
(choosing the best on them would flatter it). Reference: /work/shared/reference/ph2_unet_resnet18.py.
"""
from flaxderm.train import config as config_lib


def get_config(arg=None):
  c = recipe()
  if arg == "runlocal":
    config_lib.runlocal(c)
  return c


def recipe():
  """The experiment at full size (``ph2_segmentation_cpu`` builds on it)."""
  c = config_lib.default_config()
  c.model.name = "unet"
  c.model.kwargs = {"encoder_name": "resnet18"}
  c.data.name = "ph2"
  c.data.manual_dir = None
  c.data.split = "hashed"
  c.data.source_split = "train"
  c.data.image_size = 128
  c.data.resize = "stretch"
  c.data.normalization = "dataset"
  c.data.cache = True
  c.data.augment.rot90.p = 0.5
  c.loss.name = "dice_ce"
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.schedule.name = "cosine"
  c.schedule.final_fraction = 0.05
  c.batch_size = 8
  c.num_epochs = 0
  c.budget_s = 1200.0
  c.eval.every_steps = 500
  c.eval.batch_size = 16
  c.log_every_steps = 25
  c.final_params = "last"
  return c
