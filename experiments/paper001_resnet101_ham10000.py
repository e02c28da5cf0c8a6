"""Paper 001: ResNet-101 on HAM10000's melanoma / nevus / seborrheic-keratosis subset, weighted.

    python launch.py paper001_resnet101_ham10000 --config.data.manual_dir=HAM10000_DIR

Paper 001 (§3.1, §4.2-4.3): ResNet-101 with a softmax loss whose class weights counter the class
imbalance, 100 training epochs, validation after every epoch, and the final model taken from the
epoch with the best validation accuracy. The 3-class subset is the ``ham10000/paper001`` builder
config (bkl / mel / nv); train and validation are split by lesion (about 70/30), so no lesion is on
both sides. Class weights are the inverse training frequencies (``class_weight_power=1``).
"""
from flaxderm.train import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "resnet101"
  c.data.name = "ham10000"
  c.data.builder_config = "paper001"
  c.data.split = "hashed"
  c.data.image_size = 224
  c.data.augment.rotate.p = 0.5
  c.data.augment.color_jitter.p = 0.5
  c.loss.name = "cross_entropy"
  c.loss.class_weight_power = 1.0
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "cosine"
  c.batch_size = 32
  c.num_epochs = 100
  c.eval.every_epochs = 1
  c.eval.batch_size = 32
  c.eval.best_metric = "accuracy"
  c.final_params = "best"
  if arg == "runlocal":
    config_lib.runlocal(c, depths=(1, 1, 1, 1))
  return c
