"""ViT-Tiny/16 (ImageNet-21k -> 1k weights) fine-tuned on HAM10000's 7 diagnoses.

    python launch.py vit_ham10000 --config.data.manual_dir=HAM10000_DIR

Papers 000/003: vision transformers for skin-lesion classification; paper 002: transfer learning
from ImageNet. Recipe in experiments/_ham10000_transformer.py (AdamW 1e-4, warmup-cosine, 30
epochs, 224 px, class weights, best balanced accuracy). The weights are timm's
``vit_tiny_patch16_224.augreg_in21k_ft_in1k`` (tag ``vit_tiny.augreg_in21k_ft_in1k``, read from
the Hugging Face cache or $FLAXDERM_WEIGHTS_DIR; ``--config.model.pretrained=`` trains from scratch).
"""
from ._ham10000_transformer import transformer_config


def get_config(arg=None):
  return transformer_config("vit_tiny", "vit_tiny.augreg_in21k_ft_in1k", arg, depth=2)
