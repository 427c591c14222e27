"""2-D convolutions on the CPU through oneDNN (the library TensorFlow and PyTorch use), in jitted code.

`conv` calls the XLA FFI handlers of `onednn_conv.cc` (built by `pip install` into
`_onednn_conv*.so`, linked against the `onednn-cpu-gomp` wheel's libdnnl): forward, and the
input's and kernel's gradients through `jax.custom_vjp`. NHWC activations and HWIO kernels, as
`lax.conv_general_dilated` takes them with flax's dimension numbers; any stride, padding,
dilation and feature groups; float32 and bfloat16; bias and ReLU fused into the forward pass.
`max_pool` is oneDNN's float32 max pooling, its backward pass from the forward's workspace.

`available()` says whether the library loaded; where it cannot (not Linux x86-64, no compiler at
install time, a broken libdnnl), `unavailable_reason()` says why and imgcls keeps its other kernels.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LIBRARY_NAME = "_onednn_conv"
TARGETS = (
  "imgcls_onednn_conv_fwd",
  "imgcls_onednn_conv_bwd_data",
  "imgcls_onednn_conv_bwd_w",
  "imgcls_onednn_max_pool_fwd",
  "imgcls_onednn_max_pool_bwd",
)
DNNL_DISTRIBUTION = "onednn-cpu-gomp"


def _library_path() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = os.path.join(here, LIBRARY_NAME + suffix)
    if os.path.exists(path):
      return path
  return None


def _preload_dnnl() -> None:
  """Loads the onednn-cpu-gomp wheel's libdnnl.so.3 globally, so the handlers' library finds it
  (the wheel puts it in the environment's lib/, which is not on the loader's path)."""
  try:
    files = importlib.metadata.distribution(DNNL_DISTRIBUTION).files or []
  except importlib.metadata.PackageNotFoundError:
    return  # Then libdnnl.so.3 must be on the loader's path (LD_LIBRARY_PATH, a system install).
  for file in files:
    if file.name == "libdnnl.so.3":
      ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
      return


_LIBRARY: list[ctypes.CDLL] = []  # the loaded handlers' library, once loaded
LAYOUTS = ("auto", "nhwc", "blocked")  # the index is the handlers' code


@functools.cache
def _load() -> tuple[str | None, str]:
  """(oneDNN's version, "") once the handlers are registered with XLA, else (None, why not)."""
  if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
    return None, f"oneDNN convolutions are built for Linux x86-64 only, not {sys.platform} {platform.machine()}"
  path = _library_path()
  if path is None:
    return None, (
      f"imgcls/models/{LIBRARY_NAME}*.so was not built at install time (no C++ compiler, or "
      "onednn-devel-cpu-gomp missing); reinstall with `pip install -e .` to build it"
    )
  try:
    _preload_dnnl()
    library = ctypes.CDLL(path)
    library.imgcls_onednn_version.restype = ctypes.c_char_p
    version = library.imgcls_onednn_version().decode()
    _LIBRARY.append(library)
    for name in TARGETS:
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
  except (OSError, AttributeError) as error:
    return None, f"the oneDNN convolution library did not load: {error}"
  return version, ""


def available() -> bool:
  """Whether the oneDNN convolutions loaded (they are registered for the CPU backend)."""
  return _load()[0] is not None


def unavailable_reason() -> str:
  """Why `available()` is False, in one line ("" when it is True)."""
  return _load()[1]


def version() -> str | None:
  """The loaded oneDNN's version ("3.2.0"), or None."""
  return _load()[0]


def set_split(split: bool) -> None:
  """Whether convolutions of two or more images run as two halves of the batch, each single-threaded
  on one of XLA's threads (True, the default: they then share the cores with the XLA work running
  beside them), or on oneDNN's OpenMP team of every core (False). `IMGCLS_ONEDNN_SPLIT=0` too."""
  if not available():
    raise RuntimeError(unavailable_reason())
  _LIBRARY[0].imgcls_onednn_set_split(int(bool(split)))


@functools.cache
def supports_bfloat16() -> bool:
  """Whether this CPU runs oneDNN's bfloat16 convolutions (AVX-512 and newer do)."""
  return available() and bool(_LIBRARY[0].imgcls_onednn_supports_bfloat16())


def set_layout(layout: str) -> None:
  """The activations' layout inside oneDNN for convolutions met from now on: "nhwc" (the default,
  as XLA holds them), "blocked" (oneDNN's, reordered from and to NHWC around each call) or "auto"
  (whichever ran faster on a convolution's first call: a few percent faster on some models, but a
  resumed run may then pick differently and differ by float rounding). `IMGCLS_ONEDNN_LAYOUT` too."""
  if layout not in LAYOUTS:
    raise ValueError(f"oneDNN layout {layout!r} is not one of {', '.join(LAYOUTS)}.")
  if not available():
    raise RuntimeError(unavailable_reason())
  _LIBRARY[0].imgcls_onednn_set_layout(LAYOUTS.index(layout))


@functools.cache
def warn_unavailable() -> None:
  """Logs, once per process, the one line saying why oneDNN is not used."""
  logging.getLogger("imgcls").warning("oneDNN convolutions not used: %s; using imgcls's other CPU kernels.", unavailable_reason())


Pads = tuple[tuple[int, int], tuple[int, int]]


def explicit_padding(
  padding: str | Sequence, in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> Pads:
  """ "SAME"/"VALID" or ((top, bottom), (left, right)) as explicit pads, as XLA computes them."""
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
    pads = lax.padtype_to_pads(tuple(in_hw), tuple(dilated), tuple(strides), padding)
  else:
    pads = padding
  (top, bottom), (left, right) = pads
  return (int(top), int(bottom)), (int(left), int(right))


def _attrs(strides, pads: Pads, dilation, groups: int) -> dict:
  return dict(
    strides=np.asarray(strides, np.int64),
    padding=np.asarray([*pads[0], *pads[1]], np.int64),
    dilation=np.asarray(dilation, np.int64),
    groups=np.int64(groups),
  )


def _out_hw(in_hw, kernel_hw, strides, pads: Pads, dilation) -> tuple[int, int]:
  return tuple(
    (size + lo + hi - ((k - 1) * d + 1)) // s + 1 for size, k, s, (lo, hi), d in zip(in_hw, kernel_hw, strides, pads, dilation)
  )


def _forward(x, kernel, bias, strides, pads, dilation, groups, relu):
  out_hw = _out_hw(x.shape[1:3], kernel.shape[:2], strides, pads, dilation)
  out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kernel.shape[3]), x.dtype)
  return jax.ffi.ffi_call("imgcls_onednn_conv_fwd", out)(
    x, kernel, bias, **_attrs(strides, pads, dilation, groups), relu=bool(relu)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _conv(x, kernel, bias, strides, pads, dilation, groups, relu):
  return _forward(x, kernel, bias, strides, pads, dilation, groups, relu)


def _conv_fwd(x, kernel, bias, strides, pads, dilation, groups, relu):
  y = _forward(x, kernel, bias, strides, pads, dilation, groups, relu)
  return y, (x, kernel, bias, y if relu else None)


def _conv_bwd(strides, pads, dilation, groups, relu, residuals, grad):
  x, kernel, bias, y = residuals
  if relu:
    grad = jnp.where(y > 0, grad, jnp.zeros((), grad.dtype))
  grad = grad.astype(x.dtype)
  attrs = _attrs(strides, pads, dilation, groups)
  dx = jax.ffi.ffi_call("imgcls_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x.shape, x.dtype))(grad, kernel, **attrs)
  dkernel, dbias = jax.ffi.ffi_call(
    "imgcls_onednn_conv_bwd_w", (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype), jax.ShapeDtypeStruct(bias.shape, bias.dtype))
  )(x, grad, **attrs)
  return dx, dkernel, dbias


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None = None,
  *,
  strides: Sequence[int] = (1, 1),
  padding: str | Sequence = "SAME",
  dilation: Sequence[int] = (1, 1),
  groups: int = 1,
  relu: bool = False,
) -> jax.Array:
  """relu?(conv(x, kernel) + bias) by oneDNN: `lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)`.

  The kernel and bias are cast to x's dtype (float32 or bfloat16). Differentiable in x, kernel
  and bias. Raises RuntimeError where oneDNN is not `available()`.
  """
  if not available():
    raise RuntimeError(unavailable_reason())
  strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
  pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  kernel = kernel.astype(x.dtype)
  bias = jnp.zeros((0,), x.dtype) if bias is None else bias.astype(x.dtype)
  return _conv(x, kernel, bias, strides, pads, dilation, int(groups), bool(relu))


def _pool_attrs(window, strides, pads: Pads) -> dict:
  return dict(
    window=np.asarray(window, np.int64), strides=np.asarray(strides, np.int64), padding=np.asarray([*pads[0], *pads[1]], np.int64)
  )


def _max_pool_forward(x, window, strides, pads):
  out_hw = _out_hw(x.shape[1:3], window, strides, pads, (1, 1))
  out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, x.shape[3]), x.dtype)
  workspace = jax.ShapeDtypeStruct(out.shape, jnp.int32)  # where each window's maximum was
  return jax.ffi.ffi_call("imgcls_onednn_max_pool_fwd", (out, workspace))(x, **_pool_attrs(window, strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _max_pool_forward(x, window, strides, pads)[0]


def _max_pool_fwd(x, window, strides, pads):
  y, workspace = _max_pool_forward(x, window, strides, pads)
  return y, (workspace, x.shape)


def _max_pool_bwd(window, strides, pads, residuals, grad):
  workspace, shape = residuals
  dx = jax.ShapeDtypeStruct(shape, grad.dtype)
  return (jax.ffi.ffi_call("imgcls_onednn_max_pool_bwd", dx)(grad, workspace, **_pool_attrs(window, strides, pads)),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], pads: Sequence[Sequence[int]]) -> jax.Array:
  """Float32 NHWC max pooling by oneDNN over windows of x padded by `pads` ((top, bottom), (left,
  right); padded pixels never win). Its gradient goes to each window's first maximum, as
  TensorFlow's and XLA's. Raises RuntimeError where oneDNN is not `available()`."""
  if not available():
    raise RuntimeError(unavailable_reason())
  (top, bottom), (left, right) = pads
  pads = (int(top), int(bottom)), (int(left), int(right))
  return _max_pool(x, tuple(int(w) for w in window), tuple(int(s) for s in strides), pads)
