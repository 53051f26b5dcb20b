"""Device mesh and logical axis rules, both read from the config.

Models only name axes (`embed`, `mlp`, `act_batch`, ...). The rules table maps those names to
mesh axes; changing how a model is sharded is a config change, never a model change.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical name → mesh axis (or axes, or None for replicated)
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_in", None),
    ("embed_out", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("norm", None),
    ("layers", None),  # the stacked axis of scanned layers
)


def resolve_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh shape from {axis: size}; one axis may be -1, meaning "the rest of the devices"."""
  shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh {dict(sizes)}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh {dict(sizes)}: sizes must be positive or -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {dict(sizes)}: the fixed axes ({known} devices) do not divide the "
                       f"{num_devices} devices; change the mesh sizes")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) > num_devices or num_devices % math.prod(shape):
    raise ValueError(f"mesh {dict(sizes)} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available; change the mesh sizes so they divide it")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_shape(sizes, len(devices))
  n = math.prod(shape)
  if n < len(devices):
    log.warning("mesh %s uses %d of %d devices", shape, n, len(devices))
  return Mesh(np.asarray(devices[:n]).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Sequence[Sequence] | None) -> tuple:
  return tuple((str(k), tuple(v) if isinstance(v, list) else v)
               for k, v in (rules if rules is not None else DEFAULT_RULES))


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a (boxed) abstract param tree: eval_shape → specs → mesh."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
