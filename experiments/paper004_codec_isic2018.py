"""Paper 004: separable-dilated codec on ISIC 2018 Task 1, validated on PH2, weighted Dice loss.

    python launch.py paper004_codec_isic2018 \
        --config.data.manual_dir=ISIC2018_DIR --config.eval_data.manual_dir=PH2_DIR
    python launch.py paper004_codec_isic2018 --sweep ...   # Table 1: batch 4/8 x lr 0.01/0.05
                                                           #          x 10/20/40 epochs

Paper 004 (§4.1-4.2, Table 1): black-frame and hair removal, rotation and elastic deformation,
the depthwise-separable + dilated encoder-decoder ("codec"), Dice loss ``1 - (2|X∩Y| + 1) / (|X| +
|Y| + 1)`` with the lesion weighted 0.7 and the background 0.3, Adam, learning rate 0.01, batch 4,
20 epochs; ISIC 2018 Task 1 training images for training, all of PH2 for validation. The paper's
"accuracy" is read here as pixel accuracy; per-image Dice picks the best checkpoint. ISIC2018_DIR
holds ISIC2018_Task1-2_Training_Input/ and ISIC2018_Task1_Training_GroundTruth/; PH2_DIR holds
PH2Dataset/.
"""
from flaxderm.train import config as config_lib

from ._paper004 import paper004_data


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "sepdilated_codec"
  c.model.kwargs = {"width": 32, "rates": (3, 3, 6)}
  paper004_data(c)
  c.optimizer.lr = 0.01
  c.batch_size = 4
  c.num_epochs = 20
  if arg == "runlocal":
    config_lib.runlocal(c, width=8)
  return c


def sweep():
  """Table 1: (run name, overrides) for each batch size, learning rate and epoch count."""
  return [(f"b{b}_lr{lr}_e{e}", {"batch_size": b, "optimizer.lr": lr, "num_epochs": e})
          for b in (4, 8) for lr in (0.01, 0.05) for e in (10, 20, 40)]
