"""Test-time augmentation: the model's probabilities averaged over flipped views of each image.

`--tta=flip` averages the image and its mirror image (fastai's and timm's usual choice); a list
such as `--tta=flip_lr,flip_ud,flip_lr_ud` adds the image's other flips. The original is always
one of the views. Views are exact pixel permutations, so no interpolation blurs them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

VIEWS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "flip_lr": lambda x: x[:, :, ::-1],
  "flip_ud": lambda x: x[:, ::-1],
  "flip_lr_ud": lambda x: x[:, ::-1, ::-1],
}
ALIASES = {"flip": "flip_lr"}


def parse(spec: str) -> tuple[str, ...]:
  """The views of a `--tta` value ("" or "none": no TTA), the original first; fails naming unknown ones."""
  names = [ALIASES.get(n.strip(), n.strip()) for n in spec.split(",") if n.strip() and n.strip() != "none"]
  unknown = [n for n in names if n not in VIEWS]
  if unknown:
    raise ValueError(f"--tta: unknown view(s) {unknown}; choose from {', '.join([*ALIASES, *VIEWS])}, comma-separated.")
  return ("original", *dict.fromkeys(names)) if names else ()


def averaged_logits(logits_fn: Callable[[jax.Array], jax.Array], views: tuple[str, ...]) -> Callable[[jax.Array], jax.Array]:
  """`images -> logits` whose probabilities are the mean of `logits_fn`'s over `views` (NHWC
  images): log-probabilities (softmax) or log-odds (one sigmoid unit), so that everything that
  reads logits reads the averaged probabilities."""

  @jax.jit
  def fn(images: jax.Array) -> jax.Array:
    outputs = [logits_fn(images if v == "original" else VIEWS[v](images)) for v in views]
    tiny = jnp.finfo(jnp.float32).tiny  # No log(0): a certain class keeps a finite logit.
    if outputs[0].shape[-1] == 1:
      p = jnp.mean(jnp.stack([jax.nn.sigmoid(o) for o in outputs]), axis=0)
      return jnp.log(jnp.maximum(p, tiny)) - jnp.log(jnp.maximum(1.0 - p, tiny))
    return jnp.log(jnp.maximum(jnp.mean(jnp.stack([jax.nn.softmax(o, axis=-1) for o in outputs]), axis=0), tiny))

  return fn
