"""flaxderm's model zoo: ``create_model(name, *, num_classes, **kwargs)`` and ``list_models()``.

The encoder contract (smp-style, shared by every classification family):

* A classification model is a ``flax.linen.Module`` called as ``model.apply(variables, x, train)``
  with ``x`` an NHWC float batch; it returns logits ``(N, num_classes)``, or the pooled features
  when ``num_classes == 0``.
* ``model.apply(variables, x, train, features_only=True)`` returns a list of five NHWC feature maps
  at strides 2, 4, 8, 16, 32 (divided by the dilation factor when ``output_stride`` is 16 or 8). A
  stride a family does not produce is a map with zero channels. The head is not built on that path,
  so an encoder's parameters are the classifier's without its head.
* ``model.feature_channels`` gives those five channel counts without running the model.
* CNN families accept ``output_stride`` in (8, 16, 32): their last stages trade stride for dilation.

Segmentation models take any registered classification model by ``encoder_name`` and return
per-pixel logits ``(N, H, W, num_classes)`` at the input size.
"""
from flaxderm.models.registry import ModelEntry, create_model, list_models, model_entry, register_model

# Importing a family registers its variants.
from flaxderm.models import (  # noqa: E402,F401  classification
    resnet, efficientnet, mobilenet, vit, swin, densenet, vgg, inception, xception)
from flaxderm.models import (  # noqa: E402,F401  segmentation
    unet, unetplusplus, linknet, manet, fpn, pspnet, pan, upernet, deeplab, attention_unet, segnet,
    fcn, transunet, codec)

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]
