"""The PH2 segmentation recipe that the PH2 experiments share."""
from flaxderm.train import config as config_lib


def recipe():
  """PH2 on a 2-core CPU, at full size: ``ph2_unet_cpu`` runs it as it is, ``ph2_segmentation_cpu``
  builds on it."""
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
