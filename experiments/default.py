"""Small U-Net on the synthetic lesions the package generates: minutes on a CPU, no download.

    python launch.py                  # = python launch.py default --workdir runs/default

The engine's smoke test and a first look at the run directory (checkpoints, metrics.jsonl,
TensorBoard events, predictions.png). Original U-Net, base width 16, depth 3, BatchNorm, 64 px,
Dice + cross-entropy, Adam 3e-3 with cosine decay, batch 8, 400 steps.
"""
from flaxderm.train import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "unet"
  c.model.kwargs.base_width = 16
  c.model.kwargs.depth = 3
  c.data.name = "synthetic_lesions"
  c.data.image_size = 64
  c.data.cache = True
  c.loss.name = "dice_ce"
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-3
  c.schedule.name = "cosine"
  c.batch_size = 8
  c.num_steps = 400
  c.eval.every_steps = 200
  c.eval.batch_size = 32
  c.log_every_steps = 20
  if arg == "runlocal":
    config_lib.runlocal(c)
  return c
