"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, on the device, as
timm's `Mixup` in its default batch mode: one mixing coefficient per batch, each image mixed with
the batch's reversed order, soft targets mixed by the same coefficient (CutMix's corrected by
the pasted box's real area). Padding rows of a last partial batch are never mixed into real ones.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mix:
  """How batches are mixed (`config.train.mixup_alpha`, `cutmix_alpha`, `mix_prob`, `mix_switch_prob`)."""

  mixup_alpha: float = 0.0  # Beta(alpha, alpha) coefficient of mixup; 0: off.
  cutmix_alpha: float = 0.0  # The same for CutMix; 0: off.
  prob: float = 1.0  # Probability that a batch is mixed at all.
  switch_prob: float = 0.5  # With both on: probability of CutMix rather than mixup.

  @property
  def enabled(self) -> bool:
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def from_config(train_config) -> Mix:
  return Mix(train_config.mixup_alpha, train_config.cutmix_alpha, train_config.mix_prob, train_config.mix_switch_prob)


def partners(mask: jax.Array) -> jax.Array:
  """The index each row is mixed with: the real rows reversed (as timm's `x.flip(0)`), padding with itself."""
  i = jnp.arange(mask.shape[0])
  n = jnp.sum(mask > 0).astype(i.dtype)
  return jnp.where(i < n, n - 1 - i, i)


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """A box covering about 1 - lam of the image, centred anywhere, clipped at the borders (timm's
  `rand_bbox`): (a (height, width) 0/1 mask of the box, the lam its real area gives)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(key)
  cy, cx = jax.random.randint(ky, (), 0, height), jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).astype(jnp.float32)
  return box, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mix_batch(mix: Mix, images: jax.Array, mask: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mixed NHWC images, lam, partner indices): row i becomes lam * image i + (1 - lam) * image
  partner[i] (mixup) or image i with a box of image partner[i] pasted in (CutMix); the train
  step mixes row i's soft targets and class weights with its partner's by the same lam."""
  k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(key, 5)
  j = partners(mask)
  use_cutmix = jnp.bool_(mix.mixup_alpha <= 0)
  if mix.mixup_alpha > 0 and mix.cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(k_switch, mix.switch_prob)
  lam_mixup = jax.random.beta(k_mixup, mix.mixup_alpha, mix.mixup_alpha) if mix.mixup_alpha > 0 else jnp.float32(1.0)
  lam_cutmix = jax.random.beta(k_cutmix, mix.cutmix_alpha, mix.cutmix_alpha) if mix.cutmix_alpha > 0 else jnp.float32(1.0)
  box, lam_box = cutmix_box(k_box, lam_cutmix, images.shape[1], images.shape[2])
  applied = jax.random.bernoulli(k_apply, mix.prob)
  lam = jnp.where(applied, jnp.where(use_cutmix, lam_box, lam_mixup), 1.0).astype(jnp.float32)
  partner, box = images[j], box[None, :, :, None]
  mixed = jnp.where(use_cutmix, images * (1.0 - box) + partner * box, lam * images + (1.0 - lam) * partner)
  return jnp.where(applied, mixed, images).astype(images.dtype), lam, j
