"""Swin-Tiny (ImageNet-1k weights) fine-tuned on HAM10000's 7 diagnoses.

    python launch.py swin_ham10000 --config.data.manual_dir=HAM10000_DIR

Papers 000/003: shifted-window transformers for skin-lesion classification; paper 002: transfer
learning from ImageNet. Same recipe as vit_ham10000 (experiments/_ham10000_transformer.py). The
weights are timm's ``swin_tiny_patch4_window7_224.ms_in1k`` (tag ``swin_tiny.ms_in1k``;
``--config.model.pretrained=`` trains from scratch).
"""
from ._ham10000_transformer import transformer_config


def get_config(arg=None):
  return transformer_config("swin_tiny", "swin_tiny.ms_in1k", arg, depths=(2, 1, 1, 1))
