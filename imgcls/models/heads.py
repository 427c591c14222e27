"""The classification head that sits on any backbone: pool or flatten, Dense layers, output."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from imgcls.models.batch_norm import BatchNorm

_KERNEL_INIT = nnx.initializers.glorot_uniform()  # Keras's Dense default, so recipes start as in Keras.


def dropout(layer: nnx.Dropout, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
  """`layer(x, rngs=rngs)`; without `rngs` (inference) `layer(x)`, the call jax2onnx's Dropout translation takes.

  In training on the CPU, the mask's bits come from XLA's own Threefry generator
  (`lax.rng_bit_generator`), 4x faster there than `jax.random`'s (a 32x110x110x64 mask, the
  X-ray CNN's: 62 against 257 ms on 2 cores); other platforms keep `jax.random.bernoulli`.
  """
  if rngs is None:
    return layer(x)
  if layer.deterministic is not False or layer.rate in (0.0, 1.0):
    return layer(x, rngs=rngs)
  key = rngs[layer.rng_collection]()
  keep = 1.0 - layer.rate
  shape = tuple(1 if axis in layer.broadcast_dims else size for axis, size in enumerate(x.shape))
  mask = lax.platform_dependent(
    key, cpu=functools.partial(_cpu_keep_mask, keep=keep, shape=shape), default=lambda k: jax.random.bernoulli(k, keep, shape)
  )
  return lax.select(jnp.broadcast_to(mask, x.shape), x / keep, jnp.zeros_like(x))


def _cpu_keep_mask(key: jax.Array, *, keep: float, shape: tuple[int, ...]) -> jax.Array:
  """True with probability `keep` (to 2^-32), from XLA's Threefry bits seeded by `key`."""
  state = jax.random.bits(key, (4,), jnp.uint32)
  bits = lax.rng_bit_generator(state, shape, jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY)[1]
  return bits < jnp.uint32(min(round(keep * 2**32), 2**32 - 1))


class Head(nnx.Module):
  """Pool (or flatten) the features, then Dense(+BatchNorm)+ReLU layers, dropout, output Dense.

  `pooling`: "flatten", "avg", "max" or "none" (features are already a vector).
  `input_dropout` is applied to the features before pooling (the cats-vs-dogs tutorial's BatchNorm CNN does this).
  The output layer has `num_outputs` units and returns logits.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    num_outputs: int,
    *,
    pooling: str = "flatten",
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    batch_norm: bool = False,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    rngs: nnx.Rngs,
  ):
    if pooling not in ("flatten", "avg", "max", "none"):
      raise ValueError(f"Head pooling must be flatten, avg, max or none, not {pooling!r}.")
    self.pooling = pooling
    if pooling == "flatten" or pooling == "none":
      width = 1
      for d in in_shape:
        width *= int(d)
    else:
      width = int(in_shape[-1])
    self.input_dropout = nnx.Dropout(input_dropout) if input_dropout > 0 else None
    layers = []
    norms = []
    for units in hidden:
      layers.append(nnx.Linear(width, int(units), kernel_init=_KERNEL_INIT, rngs=rngs))
      norms.append(BatchNorm(int(units), momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs) if batch_norm else None)
      width = int(units)
    self.hidden = nnx.List(layers)
    self.norms = nnx.List(norms)
    self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
    self.output = nnx.Linear(width, num_outputs, kernel_init=_KERNEL_INIT, rngs=rngs)

  def pool(self, x: jax.Array) -> jax.Array:
    if self.pooling == "avg":
      return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if self.pooling == "max":
      return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))
    return x.reshape(x.shape[0], -1)

  def embed(self, x: jax.Array, *, rngs: nnx.Rngs | None = None, hidden_layer: int | None = None) -> jax.Array:
    """The penultimate representation (what the output layer sees), or the activations of hidden
    layer number `hidden_layer` (its Dense and ReLU, before its BatchNorm)."""
    if self.input_dropout is not None:
      x = dropout(self.input_dropout, x, rngs)
    x = self.pool(x)
    for number, (layer, norm) in enumerate(zip(self.hidden, self.norms)):
      x = nnx.relu(layer(x))
      if number == hidden_layer:
        return x
      if norm is not None:
        x = norm(x)
    if self.dropout is not None:
      x = dropout(self.dropout, x, rngs)
    return x

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.output(self.embed(x, rngs=rngs))
