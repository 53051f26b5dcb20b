"""Multi-process (multi-host) setup: join the job, then feed each process only its batch rows.

Every process runs the same program on its own devices; `jax.distributed.initialize` joins them
into one set of global devices, so the mesh spans all hosts and `jit` inserts the collectives.
Where the job's shape comes from, first match wins:

  config.distributed  {coordinator: "host:port", num_processes: N, process_id: i}
  environment         JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  SLURM               srun with more than one task (jax reads SLURM_* itself)
  TPU pod             TPU_WORKER_HOSTNAMES with more than one host, or config.distributed.auto

Anything else is one process, and `initialize` does nothing. It must run before the first JAX
computation: once a backend exists, the device set cannot grow.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)


def _settings(config) -> dict[str, Any] | None:
  """Keyword arguments for jax.distributed.initialize, or None for a single process."""
  d = dict(config.get("distributed") or {}) if config is not None else {}
  if d.get("coordinator") or int(d.get("num_processes") or 1) > 1:
    missing = [k for k in ("coordinator", "num_processes", "process_id") if d.get(k) is None]
    if missing:
      raise ValueError(f"config.distributed sets {sorted(k for k in d if d[k] is not None)} but "
                       f"not {missing}; give coordinator, num_processes and process_id together")
    return dict(coordinator_address=str(d["coordinator"]), num_processes=int(d["num_processes"]),
                process_id=int(d["process_id"]))
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    if "JAX_PROCESS_ID" not in env:
      raise ValueError("JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set but "
                       "JAX_PROCESS_ID is not; set it to this process's rank")
    return dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(env["JAX_NUM_PROCESSES"]),
                process_id=int(env["JAX_PROCESS_ID"]))
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return {}  # jax's SLURM detection reads the coordinator, count and rank itself
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1 or d.get("auto"):
    return {}  # TPU pods (and other supported clusters) are detected by jax
  return None


def initialize(config=None) -> tuple[int, int]:
  """Join the multi-process job the config or environment describes; (process_index, count)."""
  kwargs = _settings(config)
  if kwargs is not None and not jax.distributed.is_initialized():
    if kwargs.get("num_processes", 2) > 1:
      log.info("joining a multi-process job: %s", kwargs or "detected from the environment")
      jax.distributed.initialize(**kwargs)
  if jax.process_count() > 1:
    log.info("process %d of %d: %d local devices of %d", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_index(), jax.process_count()


def process_rows(sharding: NamedSharding, global_batch: int) -> slice:
  """The rows of a [global_batch, ...] array this process's devices hold, i.e. the rows its
  data pipeline must produce. Contiguous for meshes from `mesh.make_mesh` (devices ordered by
  process): process p of P holds rows p·B/P .. (p+1)·B/P - 1 when batch is split over all."""
  spans = {idx[0].indices(global_batch)[:2]
           for idx in sharding.addressable_devices_indices_map((global_batch,)).values()}
  start, stop = min(s for s, _ in spans), max(e for _, e in spans)
  covered = sum(e - s for s, e in spans)
  if covered != stop - start:
    raise ValueError(f"this process's devices hold non-contiguous batch rows {sorted(spans)}; "
                     "order the mesh devices by process")
  return slice(start, stop)


def put_batch(local_batch: Mapping[str, Any], sharding: NamedSharding) -> dict:
  """This process's rows of every batch array → global arrays split over `sharding`.

  Each process passes only the rows `process_rows` names; the global batch is their
  concatenation in process order. With one process this is a sharded device_put.
  """
  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:  # a scalar is the same on every process: replicate it
      return jax.device_put(x, NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    return jax.make_array_from_process_local_data(sharding, x)
  return {k: put(v) for k, v in local_batch.items()}
