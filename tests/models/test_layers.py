"""Shared layers whose implementation differs from the textbook op they stand for."""
from __future__ import annotations

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import layers


@pytest.mark.slow
@pytest.mark.parametrize("kernel_size,strides,dilation,padding", [
    (3, 1, 1, "SAME"), (3, 2, 1, "SAME"), (5, 2, 1, ((2, 2), (2, 2))), (5, 1, 1, "SAME"),
    (3, 1, 2, ((2, 2), (2, 2))), (3, 2, 1, ((1, 1), (1, 1))),
])
def test_depthwise_conv_equals_grouped_conv_with_gradients(kernel_size, strides, dilation, padding):
  x = jax.random.normal(jax.random.key(0), (2, 13, 10, 6))
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, 1, 6))

  def grouped(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        rhs_dilation=(dilation, dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])

  def shifted(x, kernel):
    return layers.depthwise_conv(x, kernel, strides=strides, dilation=dilation, padding=padding)

  np.testing.assert_allclose(shifted(x, kernel), grouped(x, kernel), rtol=1e-5, atol=1e-5)
  probe = jax.random.normal(jax.random.key(2), grouped(x, kernel).shape)
  for ours, reference in zip(jax.grad(lambda *a: jnp.sum(shifted(*a) * probe), (0, 1))(x, kernel),
                             jax.grad(lambda *a: jnp.sum(grouped(*a) * probe), (0, 1))(x, kernel)):
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_depthwise_conv_gradients_in_bfloat16_keep_dtypes_and_values():
  x = jax.random.normal(jax.random.key(0), (3, 12, 12, 8))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
  probe = jax.random.normal(jax.random.key(2), (3, 6, 6, 8))

  def grads(dtype):
    loss = lambda x, k: jnp.sum(layers.depthwise_conv(x, k, strides=2).astype(jnp.float32) * probe)
    return jax.grad(loss, (0, 1))(x.astype(dtype), kernel.astype(dtype))

  for low, full in zip(grads(jnp.bfloat16), grads(jnp.float32)):
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(np.float32), full, rtol=0.05, atol=0.3)


@pytest.mark.parametrize("kernel_size,strides,dilation,padding", [
    (3, 2, 1, "SAME"), (5, 1, 2, ((4, 4), (4, 4)))])
def test_export_traces_depthwise_conv_as_the_grouped_convolution(kernel_size, strides, dilation,
                                                                  padding):
  """Inside ``standard_convolutions`` (what export traces in) the same values come from one
  grouped ``conv_general_dilated``, the op converters map to DEPTHWISE_CONV_2D."""
  x = jax.random.normal(jax.random.key(0), (2, 13, 10, 6))
  kernel = jax.random.normal(jax.random.key(1), (kernel_size, kernel_size, 1, 6))
  conv = lambda x, k: layers.depthwise_conv(x, k, strides=strides, dilation=dilation,
                                            padding=padding)
  with layers.standard_convolutions():
    exported = jax.make_jaxpr(conv)(x, kernel)
    standard = conv(x, kernel)
  groups = [e.params["feature_group_count"] for e in exported.eqns
            if e.primitive.name == "conv_general_dilated"]
  assert groups == [6]
  assert "conv_general_dilated" not in str(jax.make_jaxpr(conv)(x, kernel))  # the shifted sums
  np.testing.assert_allclose(standard, conv(x, kernel), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides,use_bias", [(1, True), (2, False)])
def test_export_traces_pointwise_conv_as_a_1x1_convolution(strides, use_bias):
  module = layers.PointwiseConv(features=5, strides=strides, use_bias=use_bias)
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
  variables = module.init(jax.random.key(1), x)
  if use_bias:
    variables = jax.tree.map(lambda v: v + 0.5, variables)
  with layers.standard_convolutions():
    exported = jax.make_jaxpr(module.apply)(variables, x)
    standard = module.apply(variables, x)
  assert [e.primitive.name for e in exported.eqns].count("conv_general_dilated") == 1
  np.testing.assert_allclose(standard, module.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_depthwise_conv_names_a_kernel_that_does_not_fit():
  with pytest.raises(ValueError, match=r"kernel shape \(3, 3, 1, 4\).*\(1, 8, 8, 6\)"):
    layers.depthwise_conv(jnp.zeros((1, 8, 8, 6)), jnp.zeros((3, 3, 1, 4)))


@pytest.mark.slow
@pytest.mark.parametrize("window,strides,padding,size", [
    (2, 2, 0, (12, 8)),  # reshape form
    (3, 2, 1, (12, 8)),  # pair form (ResNet stem)
    (3, 2, 1, (11, 8)),  # odd height: flax's reduce_window
    (2, 2, 0, (11, 8)),
])
def test_max_pool_equals_reduce_window_with_gradients(window, strides, padding, size):
  # Distinct values, so no window has tied maxima (ties share the gradient in the fast forms).
  x = jax.random.permutation(jax.random.key(0), jnp.arange(2 * size[0] * size[1] * 3.0)).reshape(
      (2, *size, 3))

  def reference(x):
    return flax.linen.max_pool(x, (window, window), strides=(strides, strides),
                               padding=((padding, padding), (padding, padding)))

  def ours(x):
    return layers.max_pool(x, window, strides=strides, padding=padding)

  np.testing.assert_array_equal(ours(x), reference(x))
  probe = jax.random.normal(jax.random.key(1), reference(x).shape)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(ours(x) * probe))(x),
                             jax.grad(lambda x: jnp.sum(reference(x) * probe))(x), rtol=1e-6)
