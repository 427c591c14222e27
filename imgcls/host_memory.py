"""Keep freed host memory for reuse instead of giving it back to the OS after every step.

XLA on CPU allocates each step's intermediate buffers (hundreds of MB for a MobileNetV2 step)
afresh. glibc serves blocks that large with mmap and unmaps them on free, so every step faults
every page in again and the kernel zeroes it: on 2 cores that was 40 % of the pollen training
step's CPU time (bench/compare_keras.py). One malloc arena that never maps or trims large blocks
makes the next step reuse the same memory, as TensorFlow's own allocator does. The process keeps
its peak memory until it exits (bench/host_memory.py measures both).

Applied when `imgcls` is imported, before JAX starts its threads; `IMGCLS_KEEP_HOST_MEMORY=0`
turns it off. Does nothing outside glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Tell glibc's malloc to keep and reuse freed memory; True if it was applied."""
  if os.environ.get("IMGCLS_KEEP_HOST_MEMORY", "1") == "0":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  if not hasattr(libc, "gnu_get_libc_version"):
    return False
  # A trim threshold of -1 never trims (mallopt(3)); the largest int, 2 GB, still gave back the
  # dropout CNN's 224x224 activations between steps, and they were faulted in afresh.
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))
  return all(mallopt(option, value) == 1 for option, value in settings)
