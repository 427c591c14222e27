"""Builds imgcls's one native part: the oneDNN convolution handlers (imgcls/models/onednn_conv.cc).

Everything else is in pyproject.toml. The build needs a C++17 compiler, jaxlib's XLA FFI headers
and the onednn-devel-cpu-gomp wheel (both build requirements there). Where any is missing (macOS,
ARM, no compiler) imgcls installs without the library and uses its other CPU kernels.
"""

import importlib.metadata
import os
import platform
import sys

from setuptools import Extension, setup


def _located(distribution: str, suffix: str) -> str | None:
  """The installed file of `distribution` whose path ends with `suffix`, or None."""
  try:
    files = importlib.metadata.distribution(distribution).files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for file in files:
    path = os.path.normpath(str(file.locate()))
    if path.replace(os.sep, "/").endswith(suffix):
      return path
  return None


def onednn_extension() -> list[Extension]:
  if sys.platform != "linux" or platform.machine() != "x86_64":
    print(f"imgcls: not building the oneDNN convolutions on {sys.platform} {platform.machine()}")
    return []
  ffi_header = _located("jaxlib", "include/xla/ffi/api/ffi.h")
  dnnl_header = _located("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
  dnnl_library = _located("onednn-cpu-gomp", "lib/libdnnl.so.3")
  if not (ffi_header and dnnl_header and dnnl_library):
    print("imgcls: not building the oneDNN convolutions: jaxlib's FFI headers or oneDNN's wheels are missing")
    return []
  up = lambda path, levels: path if levels == 0 else up(os.path.dirname(path), levels - 1)  # noqa: E731
  library_dir = os.path.dirname(dnnl_library)
  if not os.path.exists(os.path.join(library_dir, "libdnnl.so")):
    raise SystemExit(f"imgcls: {library_dir} has libdnnl.so.3 but no libdnnl.so to link against")
  return [
    Extension(
      "imgcls.models._onednn_conv",
      sources=["imgcls/models/onednn_conv.cc"],
      include_dirs=[up(ffi_header, 4), up(dnnl_header, 3)],  # .../include
      library_dirs=[library_dir],
      libraries=["dnnl", "dl"],  # dl: dlsym finds OpenMP's thread-count calls in oneDNN's libgomp
      extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", "-Wno-return-type"],
      language="c++",
      optional=True,  # A failed compile warns and installs imgcls without it.
    )
  ]


setup(ext_modules=onednn_extension())
