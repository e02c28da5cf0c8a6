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


def paper004_data(c):
  """ISIC 2018 Task 1 training images in, PH2 (all of it) as validation: shared with the U-Net
  comparison so both see the same data."""
  c.data.name = "isic2018_task1"
  c.data.train_split = "train"
  c.data.image_size = 256
  c.data.preprocess.remove_black_frame = True
  c.data.preprocess.remove_hair = True
  c.data.augment.rotate.p = 0.5
  c.data.augment.elastic.p = 0.3
  c.eval_data = {"name": "ph2", "manual_dir": None, "split": "official", "eval_split": "train"}
  c.loss.name = "dice"
  c.loss.kwargs = {"squared_pred": True, "smooth_nr": 1.0, "smooth_dr": 1.0,
                   "include_background": True, "class_weights": (0.3, 0.7)}
  c.optimizer.name = "adam"
  c.eval.every_epochs = 1
  c.eval.batch_size = 8


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
