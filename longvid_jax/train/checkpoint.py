"""Orbax checkpoints of a stage's train state. Saves commit atomically, so a kill at any moment
leaves the previous checkpoint usable."""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


def manager(directory: pathlib.Path, every: int, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, every),
                                           create=True))


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(mngr: ocp.CheckpointManager, target, step: int | None = None):
  """Restore into the structure, dtypes and shardings of `target` (arrays or ShapeDtypeStructs)."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
