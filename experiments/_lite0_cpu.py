"""What the EfficientNet-Lite0 CPU experiments share: the recipe that ``isic2018_task3_lite0_cpu``
describes (and measures against the PyTorch reference), and its two datasets, ISIC 2018 Task 3
and PAD-UFES-20, which their image + metadata twins extend."""
from flaxderm.train import config as config_lib


def recipe():
  """ImageNet EfficientNet-Lite0 at 192 px, AdamW with a cosine decay over a 900 s budget,
  class-weighted cross-entropy, flips and 90-degree rotations, flip test-time augmentation."""
  c = config_lib.default_config()
  c.model.name = "efficientnet_lite0"
  c.model.pretrained = "efficientnet_lite0.imagenet"
  c.data.image_size = 192
  c.data.resize = "crop"
  c.data.cache = True
  c.data.augment.rot90.p = 0.75
  c.loss.name = "cross_entropy"
  c.loss.class_weight_power = 1.0
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-4
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "cosine"
  c.batch_size = 16
  c.num_epochs = 0
  c.budget_s = 900.0
  c.eval.every_steps = 1000
  c.eval.batch_size = 32
  c.eval.best_metric = "balanced_accuracy"
  c.eval.tta = "hflip"
  c.log_every_steps = 25
  c.final_params = "last"
  return c


def runlocal(c):
  """The smoke run of a Lite0 experiment (``config.runlocal``) on Lite0 at depth multiplier 0.3:
  one block per stage but one, every block type kept, a fraction of the 16-block compile time."""
  return config_lib.runlocal(c, depth_multiplier=0.3)


def isic_task3():
  """The recipe on the ISIC 2018 Task 3 images of ../shared/data, its decisions logit-adjusted
  for the training prior (isic2018_task3_lite0_cpu's docstring says why)."""
  c = recipe()
  c.data.name = "isic2018_task3"
  c.data.source_split = "test"  # the images ../shared/data holds: the Task 3 test set
  c.data.split = "hashed"
  c.eval.logit_adjustment_tau = 1.0
  return c


def pad_ufes20():
  """The recipe on PAD-UFES-20, split by patient."""
  c = recipe()
  c.data.name = "pad_ufes20"
  c.data.source_split = "train"  # the release is one part; the split holds out patients
  c.data.split = "hashed"
  return c
