"""Parity of flaxderm's FPN, PSPNet, PAN, UPerNet and DeepLabV3 with smp's (protocol:
torch_reference.py): the same random weights give the same masks (and auxiliary class logits),
and the converted weights export back into smp strictly and exactly. resnet18 encoders, batch 2,
64 px (PAN 128 px: smp's feature pyramid attention pools its 4x4 map at 64 px down to nothing).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

from flaxderm.models import convert, create_model  # noqa: E402
from torch_reference import (TOLERANCE, apply_jitted, calibration, check_export,  # noqa: E402
                             images, nchw, randomize, relative_error, state_dict)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_seed")]

# The first 3x3 conv of each dilated ResNet stage, and the dilation torchvision (and flaxderm)
# give it: the previous stage's. smp dilates it like the rest of its stage.
FIRST_DILATIONS = {16: {"layer4": 1}, 8: {"layer3": 1, "layer4": 2}}


def torchvision_dilation(reference, output_stride: int):
  for layer, dilation in FIRST_DILATIONS[output_stride].items():
    conv = getattr(reference.encoder, layer)[0].conv1
    conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
  return reference


def check_parity(reference, name: str, options: dict, size: int = 64, aux: bool = False):
  reference = randomize(reference, calibration(size))
  model = create_model(name, num_classes=2, encoder_name="resnet18",
                       aux_classes=3 if aux else 0, **options)
  variables, report = convert.from_state_dict(state_dict(reference), model)
  assert not report.dropped and not report.adapted
  x = images(size)
  with torch.no_grad():
    expected = reference(nchw(x))
  ours = apply_jitted(model, variables, x)
  if aux:
    (expected, expected_labels), (ours, ours_labels) = expected, ours
    assert relative_error(ours_labels, expected_labels.numpy()) <= TOLERANCE
  assert ours.shape == (2, size, size, 2)
  assert relative_error(np.transpose(ours, (0, 3, 1, 2)), expected.numpy()) <= TOLERANCE
  check_export(variables, model, reference)


@pytest.mark.slow
@pytest.mark.parametrize("merge_policy,interpolation,aux", [("add", "nearest", True),
                                                            ("cat", "bilinear", False)])
def test_fpn_matches_smp(merge_policy, interpolation, aux):
  reference = smp.FPN("resnet18", encoder_weights=None, classes=2,
                      decoder_merge_policy=merge_policy, decoder_interpolation=interpolation,
                      decoder_segmentation_channels=64, aux_params={"classes": 3} if aux else None)
  check_parity(reference, "fpn", dict(merge_policy=merge_policy, interpolation=interpolation,
                                      segmentation_channels=64), aux=aux)


@pytest.mark.slow
@pytest.mark.parametrize("encoder_depth,aux", [(3, True), (5, False)])
def test_pspnet_matches_smp(encoder_depth, aux):
  """The default depth 3 pools the stride-8 map (and the auxiliary head sees it); at depth 5
  smp's default x8 head upsampling would stop at a quarter of the input, so it is given x32."""
  reference = smp.PSPNet("resnet18", encoder_weights=None, classes=2, encoder_depth=encoder_depth,
                         psp_out_channels=64, upsampling=2 ** encoder_depth,
                         aux_params={"classes": 3} if aux else None)
  check_parity(reference, "pspnet", dict(encoder_depth=encoder_depth, psp_out_channels=64),
               aux=aux)


@pytest.mark.slow
def test_pan_matches_smp():
  reference = torchvision_dilation(
      smp.PAN("resnet18", encoder_weights=None, classes=2, aux_params={"classes": 3}), 16)
  check_parity(reference, "pan", {}, size=128, aux=True)


@pytest.mark.slow
def test_upernet_matches_smp():
  reference = smp.UPerNet("resnet18", encoder_weights=None, classes=2, decoder_channels=64)
  check_parity(reference, "upernet", dict(decoder_channels=64))


@pytest.mark.slow
@pytest.mark.parametrize("output_stride,aux", [(8, True), (16, False)])
def test_deeplabv3_matches_smp(output_stride, aux):
  """Output stride 8 is both libraries' default, with the same rates (12, 24, 36); at 16 flaxderm
  defaults to the paper's (6, 12, 18), so smp's are passed."""
  reference = torchvision_dilation(
      smp.DeepLabV3("resnet18", encoder_weights=None, classes=2, decoder_channels=64,
                    encoder_output_stride=output_stride,
                    aux_params={"classes": 3} if aux else None), output_stride)
  options = dict(decoder_channels=64, output_stride=output_stride)
  if output_stride == 16:
    options["atrous_rates"] = (12, 24, 36)
  check_parity(reference, "deeplabv3", options, aux=aux)
