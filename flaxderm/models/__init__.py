"""flaxderm's model zoo: ``create_model(name, *, num_classes, **kwargs)`` and ``list_models()``.

What lives here: one module per architecture family (``resnet.py``, ``unet.py`` ...), which
registers its variants with ``@register_model`` (registry.py) and, at its bottom, its PyTorch naming
rules (``naming.register_rules``) and weight tags (``weights.register_tag``); and the shared modules
the families build on, named in ``SHARED_MODULES``:

* registry.py: ``create_model``, ``list_models``, ``model_entry``, ``register_model``.
* layers.py: convolutions, norms, pooling, resizing. attention.py: squeeze-excitation and the other
  channel/spatial attention blocks. encoder.py: ``ConvNet``, the base of the CNN classifiers.
  segmentation.py: ``SegmentationModel``, the base of the encoder-decoder models. fusion.py:
  ``MetadataFusion``, any classifier fed clinical metadata beside the image.
* naming.py: PyTorch <-> flax module paths. weights.py: weight tags (pure data).
* convert.py (PyTorch checkpoints <-> variables) and pretrained.py (loading weights), which the
  families never import: ``import flaxderm.models`` loads neither them nor optax.

Every module of this package not in ``SHARED_MODULES`` is a family module and is imported here, so
a new architecture is one file with its ``@register_model`` functions: the registry, the shared
model tests (tests/models/test_models.py, through the variant that declares ``test_options``) and Grad-CAM
(``gradcam_layer``) pick it up from its registration. A new shared module must be added to
``SHARED_MODULES`` (tests/models/test_models.py checks that every family module registers a model).

What the modules may import: flax, jax, numpy and each other, shared modules not importing family
modules; nothing from the rest of flaxderm (data, losses, training) and no optimiser library.
torch and safetensors only inside convert.py's readers.

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
import importlib
import pkgutil

from flaxderm.models.registry import ModelEntry, create_model, list_models, model_entry, register_model

SHARED_MODULES = frozenset({"attention", "convert", "encoder", "fusion", "layers", "naming",
                            "pretrained", "registry", "segmentation", "weights"})

# Importing a family module registers its variants.
for _module in pkgutil.iter_modules(__path__):
  if _module.name not in SHARED_MODULES:
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]
