"""The simple CNNs of the seed tutorials, as backbones (their Dense layers live in the head)."""

from __future__ import annotations

import jax
from flax import nnx

from imgcls.models.batch_norm import BatchNorm
from imgcls.models.convs import Conv
from imgcls.models.heads import dropout
from imgcls.models.pooling import max_pool

# Keras's default initialisers, so a recipe trains as it does in Keras.
_KERNEL_INIT = nnx.initializers.glorot_uniform()


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, convs: str, *, strides: int = 1, padding: str = "SAME") -> Conv:
  return Conv(
    cin, cout, (kernel, kernel), strides=strides, padding=padding, kernel_init=_KERNEL_INIT, implementation=convs, rngs=rngs
  )


def _max_pool(x: jax.Array, conv: Conv) -> jax.Array:
  """Keras's MaxPooling2D(), through oneDNN where the convolution before it runs there."""
  return max_pool(x, (2, 2), (2, 2), implementation=conv.implementation)


def _conv_relu_pool(conv: Conv, x: jax.Array) -> jax.Array:
  """max_pool(relu(conv(x))) as relu(max_pool(conv(x))), the same values and gradients: the ReLU
  and its gradient's mask then see the pooled map, a quarter of the convolution's output."""
  return nnx.relu(_max_pool(conv(x), conv))


class SimpleBackbone(nnx.Module):
  """Base for the seed CNNs: their input is the pipeline's pixels as they come."""

  def preprocess(self, images: jax.Array, pixel_scale: float) -> jax.Array:
    del pixel_scale
    return images


class InsectsCNN(SimpleBackbone):
  """The insects tutorial: Conv(16)-Pool-Conv(32)-Pool-Conv(64)-Pool, 3x3 'same' convolutions with ReLU.

  Its head: Flatten, Dense(128, relu), Dense(classes).
  """

  default_head = dict(pooling="flatten", hidden=(128,), dropout=0.0)

  def __init__(self, channels: int, *, filters: int = 16, convs: str = "auto", rngs: nnx.Rngs):
    self.conv1 = _conv(channels, filters, 3, rngs, convs)
    self.conv2 = _conv(filters, filters * 2, 3, rngs, convs)
    self.conv3 = _conv(filters * 2, filters * 4, 3, rngs, convs)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    for conv in (self.conv1, self.conv2, self.conv3):
      x = _conv_relu_pool(conv, x)
    return x


class BatchNormCNN(SimpleBackbone):
  """The cats-vs-dogs tutorial: Conv(7x7, stride 2)-BN-Pool, then twice Conv(3x3)-BN-Pool, all 'valid', ReLU.

  BatchNorm as in the seed: Keras momentum 0.1, epsilon 1e-5. Its head: Dropout(0.3), Flatten,
  Dense(image width, relu), BatchNorm, Dense(classes).
  """

  def __init__(self, channels: int, *, filters: int = 32, image_width: int = 256, convs: str = "auto", rngs: nnx.Rngs):
    self.conv1 = _conv(channels, filters, 7, rngs, convs, strides=2, padding="VALID")
    self.conv2 = _conv(filters, filters, 3, rngs, convs, padding="VALID")
    self.conv3 = _conv(filters, filters, 3, rngs, convs, padding="VALID")
    self.norms = nnx.List([BatchNorm(filters, momentum=0.1, epsilon=1e-5, implementation=convs, rngs=rngs) for _ in range(3)])
    self.default_head = dict(
      pooling="flatten",
      hidden=(image_width,),
      dropout=0.0,
      input_dropout=0.3,
      batch_norm=True,
      bn_momentum=0.1,
      bn_epsilon=1e-5,
    )

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    for conv, norm in zip((self.conv1, self.conv2, self.conv3), self.norms):
      x = _max_pool(norm(conv(x, relu=True)), conv)
    return x


class DropoutCNN(SimpleBackbone):
  """The X-ray tutorial: Conv(32)-Conv(64)-Pool-Dropout(.25)-Conv(64)-Pool-Dropout(.25), 3x3 'valid', ReLU.

  Its head: Flatten, Dense(64, relu), Dropout(0.5), Dense(classes).
  """

  default_head = dict(pooling="flatten", hidden=(64,), dropout=0.5)

  def __init__(self, channels: int, *, filters: int = 32, convs: str = "auto", rngs: nnx.Rngs):
    self.conv1 = _conv(channels, filters, 3, rngs, convs, padding="VALID")
    self.conv2 = _conv(filters, filters * 2, 3, rngs, convs, padding="VALID")
    self.conv3 = _conv(filters * 2, filters * 2, 3, rngs, convs, padding="VALID")
    self.drop1 = nnx.Dropout(0.25)
    self.drop2 = nnx.Dropout(0.25)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    x = dropout(self.drop1, _conv_relu_pool(self.conv2, self.conv1(x, relu=True)), rngs)
    x = dropout(self.drop2, _conv_relu_pool(self.conv3, x), rngs)
    return x
