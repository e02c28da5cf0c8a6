"""Shared recipe of the HAM10000 transformer classifiers (vit_ham10000, swin_ham10000)."""
from flaxderm.train import config as config_lib


def transformer_config(model: str, weights: str, arg=None, **runlocal_model):
  """7-class HAM10000 (grouped hashed split), ImageNet weights, AdamW with warmup-cosine, class
  weights by inverse square-root frequency, best balanced accuracy kept; ``runlocal_model``: the
  fewer blocks of the ``runlocal`` smoke run."""
  c = config_lib.default_config()
  c.model.name = model
  c.model.kwargs = {"drop_path_rate": 0.1}
  c.model.pretrained = weights
  c.data.name = "ham10000"
  c.data.split = "hashed"
  c.data.image_size = 224
  c.data.augment.rot90.p = 0.5
  c.data.augment.crop.p = 0.5
  c.data.augment.color_jitter.p = 0.5
  c.loss.name = "cross_entropy"
  c.loss.kwargs = {"label_smoothing": 0.1}
  c.loss.class_weight_power = 0.5
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-4
  c.optimizer.weight_decay = 0.05
  c.optimizer.grad_clip_norm = 1.0
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_fraction = 0.05
  c.batch_size = 32
  c.num_epochs = 30
  c.eval.batch_size = 32
  c.eval.best_metric = "balanced_accuracy"
  c.final_params = "best"
  if arg == "runlocal":
    config_lib.runlocal(c, **runlocal_model)
  return c
