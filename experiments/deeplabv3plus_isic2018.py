"""DeepLabV3+ (ResNet-50 encoder, ImageNet weights) on ISIC 2018 Task 1.

    python launch.py deeplabv3plus_isic2018 --config.data.manual_dir=ISIC2018_DIR

Papers 000/002: DeepLabV3+ (ASPP, output stride 16, separable decoder) as the strong ISIC 2018
segmentation baseline (paper 002 reports Jaccard 0.876), fine-tuned from ImageNet (transfer
learning). Trains on the official training split, validates on the official validation split and
reports the ISIC thresholded Jaccard with the rest. The encoder weights are the torchvision
checkpoint ``resnet50.tv_in1k`` (its file must be in the torch hub cache or $FLAXDERM_WEIGHTS_DIR;
``--config.model.pretrained=`` trains from scratch).
"""
from flaxderm.train import config as config_lib


def get_config(arg=None):
  c = config_lib.default_config()
  c.model.name = "deeplabv3plus"
  c.model.kwargs = {"encoder_name": "resnet50", "output_stride": 16}
  c.model.pretrained = "resnet50.tv_in1k"
  c.data.name = "isic2018_task1"
  c.data.image_size = 256
  c.data.augment.rotate.p = 0.5
  c.data.augment.color_jitter.p = 0.5
  c.loss.name = "dice_ce"
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-4
  c.optimizer.weight_decay = 1e-4
  c.optimizer.encoder_lr_scale = 0.1
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_fraction = 0.03
  c.batch_size = 8
  c.num_epochs = 40
  c.eval.batch_size = 8
  c.final_params = "best"
  if arg == "runlocal":
    config_lib.runlocal(c, decoder_channels=32, encoder_kwargs={"depths": (1, 1, 1, 1)})
  return c
