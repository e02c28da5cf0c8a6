"""Shared layers whose implementation differs from the textbook op they stand for."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxderm.models import layers


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


def test_depthwise_conv_names_a_kernel_that_does_not_fit():
  with pytest.raises(ValueError, match=r"kernel shape \(3, 3, 1, 4\).*\(1, 8, 8, 6\)"):
    layers.depthwise_conv(jnp.zeros((1, 8, 8, 6)), jnp.zeros((3, 3, 1, 4)))
