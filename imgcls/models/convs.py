"""Convolutions with an implementation chosen per backend (`config.model.convs`).

XLA's CPU convolutions are slow, their gradients most of all (the insects CNN trained at 0.4x
Keras-on-TensorFlow's speed with them). The implementations:
  - `"onednn"`: regular and depthwise convolutions (forward, input and kernel gradients, fused
    bias and ReLU) through oneDNN, the library TensorFlow and PyTorch use (`imgcls.models.onednn`);
    1x1 convolutions as `"cpu"`'s matrix product (as fast in bench/conv_ops.py, and XLA fuses it).
  - `"cpu"`: imgcls's kernels written in JAX, where oneDNN is not built:
      - a depthwise convolution is k*k shifted, strided slices times the kernel's taps, added up:
        plain elementwise work that XLA fuses, forwards and backwards;
      - a 1x1 convolution is a matrix product of the (N*H*W, C) pixels with the (C, D) kernel;
      - some regular convolutions are matrix products of the image's patches (`Conv`).
  - `"xla"`: `lax.conv_general_dilated`, kept on GPU and TPU.
  - `"portable"`: `"cpu"`'s kernels on the CPU and `"xla"`'s elsewhere, chosen by the backend
    that runs the compiled program (`lax.platform_dependent`): for exported graphs
    (`--mode=export`'s StableHLO and SavedModel), which XLA compiles for whichever device loads them.
All give the same results to float rounding. `"auto"` picks `"onednn"` on the CPU backend where it
loaded (else `"cpu"`, saying why in one log line) and `"xla"` elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

import imgcls.models.onednn as onednn

IMPLEMENTATIONS = ("auto", "onednn", "cpu", "xla", "portable")
MAX_UNROLLED_WIDTH = 48  # widest output row whose depthwise taps gradient is one unrolled loop


def resolve(implementation: str) -> str:
  """ "auto" -> "onednn" (or "cpu" where oneDNN did not load) on the CPU backend, "xla" elsewhere.

  "onednn" where it did not load, or off the CPU backend, is a ValueError saying why."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Convolution implementation {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}.")
  on_cpu = jax.default_backend() == "cpu"
  if implementation == "auto":
    if not on_cpu:
      return "xla"
    if onednn.available():
      return "onednn"
    onednn.warn_unavailable()
    return "cpu"
  if implementation == "onednn" and not on_cpu:
    raise ValueError(f"model.convs='onednn' runs on the CPU only, not on {jax.default_backend()}: use 'auto' or 'xla'.")
  if implementation == "onednn" and not onednn.available():
    raise ValueError(f"model.convs='onednn', but {onednn.unavailable_reason()}. Use 'auto' or 'cpu'.")
  return implementation


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _pad(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
  """x padded as `padding` ("SAME" or "VALID") asks for a kernel_hw kernel at these strides."""
  if padding == "SAME":
    return jnp.pad(
      x, ((0, 0), _same_pads(x.shape[1], kernel_hw[0], strides[0]), _same_pads(x.shape[2], kernel_hw[1], strides[1]), (0, 0))
    )
  if padding != "VALID":
    raise ValueError(f"Unsupported padding {padding!r}.")
  return x


def _tap(x: jax.Array, i: int, j: int, out_hw: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """x[:, i + sh*h, j + sw*w, :] for the output's h, w: what tap (i, j) of a VALID kernel sees."""
  (oh, ow), (sh, sw) = out_hw, strides
  return lax.slice(x, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, x.shape[3]), (1, sh, sw, 1))


def _shifted_sum(x: jax.Array, taps: jax.Array, out_hw: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """sum over taps (i, j) of x[:, i + s*h, j + s*w, :] * taps[i, j]: a VALID depthwise correlation."""
  kh, kw = taps.shape[:2]
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _tap(x, i, j, out_hw, strides) * taps[i, j]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_valid(x: jax.Array, taps: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """VALID depthwise convolution of padded `x` (NHWC) with `taps` (kh, kw, C)."""
  (kh, kw), (sh, sw) = taps.shape[:2], strides
  out_hw = ((x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1)
  return _shifted_sum(x, taps.astype(x.dtype), out_hw, strides)


def _depthwise_valid_fwd(x, taps, strides):
  return _depthwise_valid(x, taps, strides), (x, taps)


def _depthwise_valid_bwd(strides, residuals, grad):
  """Both gradients as fused elementwise work; autodiff of the slices would pad each of k*k terms."""
  x, taps = residuals
  (kh, kw), (sh, sw) = taps.shape[:2], strides
  height, width, channels = x.shape[1:]
  oh, ow = grad.shape[1:3]
  # Input: correlate the stride-dilated, (k-1)-padded gradient with the flipped taps.
  zero = jnp.zeros((), grad.dtype)
  dilated = lax.pad(
    grad, zero, ((0, 0, 0), (kh - 1, height - (oh - 1) * sh - 1, sh - 1), (kw - 1, width - (ow - 1) * sw - 1, sw - 1), (0, 0, 0))
  )
  dx = _shifted_sum(dilated, taps[::-1, ::-1].astype(grad.dtype), (height, width), (1, 1))
  # Taps: for each (i, j), sum over n, h, w of x[n, i + s*h, j + s*w] * grad[n, h, w]. Unrolling the
  # sum over w into slices keeps it one fused loop; only the small (n, h) sums are left to reduce.
  # Rows wider than MAX_UNROLLED_WIDTH are reduced tap by tap instead, to keep the program small.
  x32, g32 = x.astype(jnp.float32), grad.astype(jnp.float32)
  taps_ij = [(i, j) for i in range(kh) for j in range(kw)]
  if ow > MAX_UNROLLED_WIDTH:
    dtaps = jnp.stack([jnp.sum(_tap(x32, i, j, (oh, ow), strides) * g32, axis=(0, 1, 2)) for i, j in taps_ij])
  else:
    row_sums = []
    for i, j in taps_ij:
      acc = None
      for w in range(ow):
        term = _tap(x32, i, j + w * sw, (oh, 1), (sh, 1))[:, :, 0] * g32[:, :, w]
        acc = term if acc is None else acc + term
      row_sums.append(acc)
    dtaps = jnp.sum(jnp.stack(row_sums), axis=(1, 2))  # one reduction for all taps
  dtaps = dtaps.reshape(kh, kw, channels)
  return dx, dtaps.astype(taps.dtype)


_depthwise_valid.defvjp(_depthwise_valid_fwd, _depthwise_valid_bwd)


def depthwise_shift(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
  """NHWC depthwise convolution (kernel HxWx1xC, multiplier 1) as shifted multiply-adds."""
  kh, kw = kernel.shape[:2]
  return _depthwise_valid(_pad(x, (kh, kw), strides, padding), kernel.reshape(kh, kw, kernel.shape[-1]), tuple(strides))


def _onednn_padding(padding) -> bool:
  """Whether oneDNN takes this nnx padding: "SAME", "VALID" or explicit ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    return padding in ("SAME", "VALID")
  return len(padding) == 2 and all(not isinstance(p, int) and len(p) == 2 for p in padding)


def as_pair(value) -> tuple[int, int]:
  """An int or a pair (as nnx.Conv takes strides and dilations) as a pair; None as (1, 1)."""
  value = 1 if value is None else value
  return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _ConvWithCpuPath(nnx.Conv):
  """`nnx.Conv` (same parameters) that subclasses compute by `cpu_conv` where `uses_cpu_path`.

  `conv(x, relu=True)` is `relu(conv(x))`, fused into the convolution where oneDNN computes it."""

  def __init__(self, *args, implementation: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    self.implementation = resolve(implementation)

  def uses_cpu_path(self) -> bool:
    return self.implementation in ("cpu", "onednn", "portable") and isinstance(self.padding, str)

  def uses_onednn(self) -> bool:
    return False

  def cpu_conv(self, x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    raise NotImplementedError

  def __call__(self, x: jax.Array, *, relu: bool = False) -> jax.Array:
    if self.uses_onednn() and (x.dtype != jnp.bfloat16 or onednn.supports_bfloat16()):
      bias = self.bias[...] if self.bias is not None else None
      return onednn.conv(
        x,
        self.kernel[...],
        bias,
        strides=as_pair(self.strides),
        padding=self.padding,
        dilation=as_pair(self.kernel_dilation),
        groups=self.feature_group_count,
        relu=relu,
      )
    if not self.uses_cpu_path():
      y = super().__call__(x)
    elif self.implementation == "portable":
      y = lax.platform_dependent(x, cpu=self._cpu_call, default=super().__call__)
    else:
      y = self._cpu_call(x)
    return nnx.relu(y) if relu else y

  def _cpu_call(self, x: jax.Array) -> jax.Array:
    y = self.cpu_conv(x, self.kernel[...], as_pair(self.strides))
    return y + self.bias[...].astype(y.dtype) if self.bias is not None else y


class DepthwiseConv(_ConvWithCpuPath):
  """`nnx.Conv` with `feature_group_count == in_features`; "onednn": oneDNN's; "cpu": `depthwise_shift`."""

  def __init__(self, channels: int, kernel_size, *, implementation: str = "auto", **kwargs):
    super().__init__(channels, channels, kernel_size, feature_group_count=channels, implementation=implementation, **kwargs)

  def uses_onednn(self) -> bool:
    return self.implementation == "onednn" and _onednn_padding(self.padding)

  def cpu_conv(self, x, kernel, strides):
    return depthwise_shift(x, kernel, strides, self.padding)


def pointwise_dot(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """NHWC 1x1 convolution (kernel 1x1xCxD, stride 1) as one matrix product."""
  n, height, width, channels = x.shape
  out = x.reshape(-1, channels) @ kernel.reshape(channels, -1).astype(x.dtype)
  return out.reshape(n, height, width, -1)


class PointwiseConv(_ConvWithCpuPath):
  """`nnx.Conv` with a 1x1 kernel and stride 1; "onednn": oneDNN's; "cpu": `pointwise_dot`."""

  def __init__(self, in_features: int, out_features: int, *, implementation: str = "auto", **kwargs):
    super().__init__(in_features, out_features, (1, 1), implementation=implementation, **kwargs)

  def uses_onednn(self) -> bool:
    # Measured in whole training steps against the matrix product (YNNPACK's dot), 2 cores:
    # ResNet50 13% faster, InceptionV3 4.5%, MobileNetV2 (pollen) and EfficientNetB0 within 1.5%.
    return self.implementation == "onednn"

  def uses_cpu_path(self) -> bool:
    return self.implementation in ("cpu", "onednn", "portable")

  def cpu_conv(self, x, kernel, strides):
    return pointwise_dot(x, kernel)


def _patches(x: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
  """(N, out_h, out_w, kh*kw*C): each output pixel's input patch, ordered (i, j, c) as a kernel."""
  (kh, kw), (sh, sw), x = kernel_hw, strides, _pad(x, kernel_hw, strides, padding)
  out_hw = ((x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1)
  return jnp.concatenate([_tap(x, i, j, out_hw, strides) for i in range(kh) for j in range(kw)], axis=-1)


def patches_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
  """NHWC convolution as one matrix product of the image's kh*kw*C patches with the kernel."""
  kh, kw, channels, features = kernel.shape
  patches = _patches(x, (kh, kw), strides, padding)
  out = patches.reshape(-1, kh * kw * channels) @ kernel.reshape(-1, features).astype(x.dtype)
  return out.reshape(*patches.shape[:3], features)


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
  return lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_patches_kernel_grad(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
  """XLA's NHWC convolution, except that the kernel's gradient is the patches' matrix product
  with the output gradient (XLA computes it as a convolution, several times slower on CPU)."""
  return _xla_conv(x, kernel, strides, padding)


def _conv_patches_kernel_grad_fwd(x, kernel, strides, padding):
  return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _conv_patches_kernel_grad_bwd(strides, padding, residuals, grad):
  x, kernel = residuals
  kh, kw, channels, features = kernel.shape
  dx = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), x)[1](grad)[0]  # Dropped by XLA if unused.
  patches = _patches(x, (kh, kw), strides, padding).reshape(-1, kh * kw * channels)
  dkernel = (patches.T @ grad.reshape(-1, features)).reshape(kernel.shape)
  return dx, dkernel.astype(kernel.dtype)


conv_patches_kernel_grad.defvjp(_conv_patches_kernel_grad_fwd, _conv_patches_kernel_grad_bwd)


class Conv(_ConvWithCpuPath):
  """`nnx.Conv`; with `"onednn"`, oneDNN's convolution (any padding, dilation and groups); with
  `"cpu"`, XLA's convolution except where the patches were measured faster
  (bench/compare_keras.py, the seed CNNs and MobileNetV2's stem):
    - few inputs per output (kh*kw*C up to 64: an image's 3 channels): `patches_conv`, both ways;
    - long patches (kh*kw*C from 256) that fit in `MAX_PATCHES_BYTES`: `conv_patches_kernel_grad`.
  """

  MAX_PATCH = 64  # kh*kw*C up to which the forward pass is the patches' product
  MIN_PATCH_FOR_KERNEL_GRAD = 256  # kh*kw*C from which the kernel's gradient is the patches' product
  MAX_PATCHES_BYTES = 128 << 20  # and the patches of the batch take no more memory than this

  def uses_onednn(self) -> bool:
    return self.implementation == "onednn" and as_pair(self.input_dilation) == (1, 1) and _onednn_padding(self.padding)

  def uses_cpu_path(self) -> bool:
    return super().uses_cpu_path() and self.feature_group_count == 1 and as_pair(self.kernel_dilation) == (1, 1)

  def cpu_conv(self, x, kernel, strides):
    patch = kernel.size // kernel.shape[-1]
    if patch <= self.MAX_PATCH:
      return patches_conv(x, kernel, strides, self.padding)
    # A symbolic batch (an exported graph) has no backward pass, and both forwards are XLA's.
    out_pixels = x.size // x.shape[-1] // (strides[0] * strides[1])
    fits = isinstance(x.shape[0], int) and out_pixels * patch * x.dtype.itemsize <= self.MAX_PATCHES_BYTES
    if patch >= self.MIN_PATCH_FOR_KERNEL_GRAD and fits:
      return conv_patches_kernel_grad(x, kernel, strides, self.padding)
    return _xla_conv(x, kernel, strides, self.padding)
