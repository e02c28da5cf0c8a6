"""Paper 004's comparison: the original U-Net in the codec's setting (ISIC 2018 -> PH2).

    python launch.py paper004_unet_isic2018 \
        --config.data.manual_dir=ISIC2018_DIR --config.eval_data.manual_dir=PH2_DIR

Paper 004 (§4.2, Figures 8-9): U-Net trained for 20 epochs, batch 8, learning rate 0.05, with the
same data, preprocessing, weighted Dice loss and Adam as ``paper004_codec_isic2018``, to compare
against the codec.
"""
from flaxderm.train import config as config_lib

from ._paper004 import paper004_data


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "unet"
  c.model.kwargs = {"base_width": 64, "depth": 4}
  paper004_data(c)
  c.optimizer.lr = 0.05
  c.batch_size = 8
  c.num_epochs = 20
  if arg == "runlocal":
    config_lib.runlocal(c, base_width=8)
  return c
