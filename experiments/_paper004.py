"""Paper 004's data setting, shared by its codec and U-Net experiments."""


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
