"""Batch normalisation whose training-mode gradient is written out by hand.

Autodiff of the batch statistics gives XLA several reductions and elementwise passes over the
activations per layer. The closed form needs two reductions forwards (sum x, sum x^2) and two
backwards (sum dy, sum dy*x), plus one elementwise pass each way. On the CPU backend that is a
quarter of a MobileNetV2 training step (bench/conv_ops.py). Same parameters and statistics as
`nnx.BatchNorm`, whose code runs everywhere else (inference, masks, named axes, `"xla"`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from imgcls.models.convs import resolve


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> tuple[jax.Array, ...]:
  """(normalised x, batch mean, batch variance) over every axis but the last, as `nnx.BatchNorm`.

  The mean and variance outputs carry no gradient (they only update the running statistics).
  """
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x32 = x.astype(jnp.float32)
  mean = jnp.sum(x32, axis=axes) / count
  var = jnp.maximum(jnp.sum(x32 * x32, axis=axes) / count - mean * mean, 0.0)  # E[x^2] - E[x]^2, as flax
  inv = jax.lax.rsqrt(var + epsilon)
  gain = inv * scale.astype(jnp.float32)
  shift = bias.astype(jnp.float32) - mean * gain
  y = (x32 * gain + shift).astype(jnp.result_type(x, scale))
  return (y, mean, var), (x, mean, inv, scale, bias)


def _backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale, bias = residuals
  dy = cotangents[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x32 = x.astype(jnp.float32)
  dbias = jnp.sum(dy, axis=axes)
  dscale = (jnp.sum(dy * x32, axis=axes) - mean * dbias) * inv  # sum(dy * x_hat)
  gain = scale.astype(jnp.float32) * inv
  # dx = gain * (dy - mean(dy) - x_hat * mean(dy * x_hat)), as a*dy + b*x + c per channel.
  b = -gain * inv * dscale / count
  c = -gain * dbias / count - b * mean
  dx = (dy * gain + x32 * b + c).astype(x.dtype)
  return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_forward, _backward)


def _output_dtype(x: jax.Array, *params: nnx.Param | None) -> jnp.dtype:
  """The activations' dtype: x's and the (compute-cast) parameters', never the float32 statistics'."""
  return jnp.result_type(x, *(p.dtype for p in params if p is not None))


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` over the last axis, its output in the activations' dtype (statistics stay float32).

  Training mode uses `batch_norm_train` when `implementation` is "cpu".
  """

  def __init__(self, num_features: int, *, implementation: str = "auto", **kwargs):
    super().__init__(num_features, **kwargs)
    self.implementation = resolve(implementation)

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
    training = not (self.use_running_average if use_running_average is None else use_running_average)
    plain = (
      self.implementation == "xla"
      or mask is not None
      or self.axis_name is not None
      or self.axis not in (-1, x.ndim - 1)
      or self.dtype is not None
    )
    if not training or plain:
      # nnx.BatchNorm promotes x to its float32 statistics' dtype; bfloat16 activations stay bfloat16.
      y = super().__call__(x, use_running_average, mask=mask)
      return y if self.dtype is not None else y.astype(_output_dtype(x, self.scale, self.bias))
    dtype = _output_dtype(x, self.scale, self.bias)
    scale = self.scale[...] if self.scale is not None else jnp.ones(x.shape[-1], dtype)
    bias = self.bias[...] if self.bias is not None else jnp.zeros(x.shape[-1], dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
    return y
