"""MobileNetV2 (Sandler et al. 2018), width 1.0: torchvision's ``mobilenet_v2`` / timm's
``mobilenetv2_100`` (3,504,872 parameters at 224 px, 1000 classes).

The two libraries hold the same network with different names, and it is EfficientNet's skeleton
with other stages: a 3x3 stride-2 stem (32 channels), one DepthwiseSeparable block (16) and
inverted-residual stages (expansion 6, 3x3 depthwise, no SE), a 1x1 conv to 1280, ReLU6
throughout, PyTorch symmetric padding, BatchNorm eps 1e-5, dropout 0.2 and a linear classifier.
So it is ``efficientnet.EfficientNet`` with MobileNetV2's stages and timm's parameter names
(``conv_stem``, ``bn1``, ``blocks_{stage}_{block}/...``, ``conv_head``, ``bn2``, ``classifier``,
see efficientnet.py). torchvision's state dict lists the same tensors in the same order
(``features.0`` = conv_stem/bn1, ``features.1`` = blocks_0_0, ``features.2`` = blocks_1_0, ...,
``features.18`` = conv_head/bn2), so it also converts one to one.

Encoder (``features_only=True``), smp's ``mobilenet_v2`` encoder: 16, 24, 32, 96 and 1280
channels at strides 2, 4, 8, 16, 32, the last map taken after ``conv_head`` (timm's
``features_only`` would give 320 there instead). smp's U-Net/DeepLab over MobileNetV2 use these
channels, which is why they are the choice here.

``output_stride`` 16 or 8 dilates the last stages' depthwise convs (timm's rule); inputs must be
divisible by ``output_stride`` (32 by default).
"""
from __future__ import annotations

from typing import Sequence

from flaxderm.models.efficientnet import TIMM_SE_RULES, EfficientNet, Stage, scaled_stages
from flaxderm.models import weights
from flaxderm.models.naming import NameRules, register_rules
from flaxderm.models.registry import register_model

MOBILENET_V2 = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(3, 3, 2, 6, 32),
    Stage(4, 3, 2, 6, 64),
    Stage(3, 3, 1, 6, 96),
    Stage(3, 3, 2, 6, 160),
    Stage(1, 3, 1, 6, 320),
)


class MobileNetV2(EfficientNet):
  """MobileNetV2 (width 1.0); see the module docstring."""
  stages: Sequence[Stage] = MOBILENET_V2
  se_ratio: float = 0.0
  act: str = "relu6"
  features_include_head: bool = True


@register_model(task="classification", family="mobilenet", default_input_size=224,
                test_options={"stages": scaled_stages(MOBILENET_V2, width=0.25, depth=0.3)})
def mobilenet_v2(*, num_classes: int, **options) -> MobileNetV2:
  """MobileNetV2 width 1.0 (torchvision, timm ``mobilenetv2_100``); 3.5M parameters at 1000
  classes."""
  return MobileNetV2(num_classes=num_classes, model_name="mobilenet_v2", **options)


register_rules("mobilenet", NameRules(rules=TIMM_SE_RULES, head=("classifier",)))


for _tag in (
    weights.torchvision_tag("mobilenet_v2.tv_in1k", "mobilenet_v2", "mobilenet_v2-b0353104.pth"),
    weights.timm_tag("mobilenet_v2.ra_in1k", "mobilenet_v2", "timm/mobilenetv2_100.ra_in1k"),
):
  weights.register_tag(_tag)
