"""Data parallelism over every device of every process, with `jax.sharding`.

One mesh axis, "data": batches are split along it, the train state is replicated. Under `jax.jit`
the step is the global computation, so BatchNorm statistics and gradients are averaged over the
whole global batch across devices. Each process reads its own share of every batch (see
`pipeline.train_batches(shard=...)`); `global_batch` assembles the global array from them.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed() -> None:
  """Starts `jax.distributed` when launched as several processes.

  Explicit: IMGCLS_COORDINATOR=host:port, IMGCLS_NUM_PROCESSES, IMGCLS_PROCESS_ID (launch/local.sh).
  Detected: IMGCLS_DISTRIBUTED=1 lets JAX find the cluster itself (TPU pods, SLURM, ...).
  """
  if os.environ.get("IMGCLS_COORDINATOR"):
    jax.distributed.initialize(
      coordinator_address=os.environ["IMGCLS_COORDINATOR"],
      num_processes=int(os.environ["IMGCLS_NUM_PROCESSES"]),
      process_id=int(os.environ["IMGCLS_PROCESS_ID"]),
    )
  elif os.environ.get("IMGCLS_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def launched_as_several_processes() -> bool:
  """True when the environment asks for jax.distributed (see `initialize_distributed`)."""
  explicit = os.environ.get("IMGCLS_COORDINATOR") and int(os.environ.get("IMGCLS_NUM_PROCESSES", "1")) > 1
  return bool(explicit) or os.environ.get("IMGCLS_DISTRIBUTED") == "1"


def sync_processes(name: str) -> None:
  """Waits for every process (a no-op in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class DataParallel:
  """The mesh of all devices and the shardings of a batch and of the (replicated) state."""

  def __init__(self, devices: list | None = None):
    devices = devices if devices is not None else jax.devices()
    self.mesh = Mesh(np.asarray(devices), ("data",))
    self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.devices = len(devices)
    self.processes = jax.process_count()

  @property
  def local_devices(self) -> int:
    return self.devices // self.processes

  def replicate(self, tree: Any) -> Any:
    """The same values on every device (every process passes the same `tree`)."""
    if self.processes == 1:
      return jax.device_put(tree, self.replicated)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> the global batch, split over every device."""
    return {k: jax.make_array_from_process_local_data(self.batch, np.asarray(v)) for k, v in local_batch.items()}

  def fits(self, local_rows: int) -> bool:
    """Whether a local batch of this many rows splits evenly over the local devices."""
    return local_rows % self.local_devices == 0
