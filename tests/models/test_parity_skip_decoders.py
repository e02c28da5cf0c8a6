"""Parity of flaxderm's U-Net++, LinkNet and MA-Net with segmentation_models_pytorch's
``UnetPlusPlus``, ``Linknet`` and ``MAnet`` (protocol: torch_reference.py): resnet18 encoder,
64 px, batch 2, the auxiliary classification head, and the export back into smp."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

import jax.numpy as jnp  # noqa: E402

from flaxderm.models import convert, create_model  # noqa: E402
from flaxderm.models.linknet import TransposedConv4x4  # noqa: E402
from torch_reference import (TOLERANCE, apply_jitted, calibration, check_export,  # noqa: E402
                             images, nchw, randomize, relative_error, state_dict)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]

# (flaxderm name, smp class name, flaxderm options, smp options, smp modules built but never called)
CASES = [
    ("unetplusplus", "UnetPlusPlus", {}, {}, ()),
    ("unetplusplus", "UnetPlusPlus", {"decoder_attention": "scse"},
     {"decoder_attention_type": "scse"}, ("decoder.blocks.x_0_4.attention1",)),
    ("linknet", "Linknet", {}, {}, ()),
    ("manet", "MAnet", {"decoder_pab_channels": 16}, {"decoder_pab_channels": 16}, ()),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,smp_name,options,smp_options,never_called", CASES,
                         ids=["unetplusplus", "unetplusplus-scse", "linknet", "manet"])
def test_skip_decoder_matches_smp(name, smp_name, options, smp_options, never_called):
  reference = randomize(getattr(smp, smp_name)("resnet18", encoder_weights=None, classes=2,
                                               aux_params={"classes": 3}, **smp_options),
                        calibration(64))
  model = create_model(name, num_classes=2, encoder_name="resnet18", aux_classes=3, **options)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert all(k.startswith(never_called) for k in report.dropped)
  assert bool(report.dropped) == bool(never_called)
  x = images(64)
  with torch.no_grad():
    masks, labels = reference(nchw(x))
  ours_masks, ours_labels = apply_jitted(model, variables, x)
  assert relative_error(np.transpose(ours_masks, (0, 3, 1, 2)), masks.numpy()) <= TOLERANCE
  assert relative_error(ours_labels, labels.numpy()) <= TOLERANCE
  check_export(variables, model, reference, skip=report.dropped)


def test_transposed_conv_matches_torch_on_odd_sizes():
  """The sub-pixel form of LinkNet's 4x4 stride-2 transposed conv, on a non-square input and with
  different in/out widths (so a swapped kernel layout cannot pass by shape)."""
  conv = torch.nn.ConvTranspose2d(6, 4, kernel_size=4, stride=2, padding=1)
  x = np.random.default_rng(0).normal(size=(2, 5, 3, 6)).astype(np.float32)
  with torch.no_grad():
    expected = conv(nchw(x)).numpy()
  # The converter's OIHW -> HWIO transpose, applied to the (in, out, kh, kw) torch weight.
  params = {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
            "bias": jnp.asarray(conv.bias.detach().numpy())}
  ours = TransposedConv4x4(4).apply({"params": params}, x)
  assert ours.shape == (2, 10, 6, 4)
  assert relative_error(np.transpose(ours, (0, 3, 1, 2)), expected) <= TOLERANCE
