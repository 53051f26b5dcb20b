"""Orbax checkpoints of a stage: the train state plus a JSON item (`meta`) holding the data
iterator's state and a fingerprint of the state.

Orbax writes each step into a temporary directory and renames it only once every file is
written, so a kill, a full disk or a failing writer never replaces the last good checkpoint.
A checkpoint that exists but cannot be read (truncated or garbled files) raises an error naming
it; on resume it is moved aside into `corrupt/` and the next older one is tried, so a rerun
resumes from the newest readable step.
Array files have no checksums of their own (a garbled chunk can decode to wrong numbers), hence
the fingerprint: a position-weighted wrapping sum of every leaf's bits, computed on device.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(OSError):
  """A checkpoint could not be written; the previous one is still on disk."""


class CheckpointCorrupt(ValueError):
  """A committed checkpoint cannot be read back as it was written."""


def manager(directory: pathlib.Path, every: int, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, every),
                                           create=True))


def _bits(x: jax.Array) -> jax.Array:
  """Any array as uint32 words (values, not bytes: narrower dtypes are widened)."""
  x = jnp.ravel(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x).ravel()
  width = np.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if width == 8:  # two words per value
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _fingerprint(tree) -> list[jax.Array]:
  def one(x):
    w = _bits(x)
    pos = jnp.arange(w.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(w * pos, dtype=jnp.uint32)  # wraps: the order of the sum cannot matter
  return [one(x) for x in jax.tree.leaves(tree)]


def fingerprint(tree) -> list[int]:
  return [int(v) for v in jax.device_get(_fingerprint(tree))]


def _failed(mngr: ocp.CheckpointManager, step: int | str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f"writing checkpoint step {step} under {mngr.directory} failed ({type(e).__name__}: {e}); "
      f"the last good checkpoint (step {mngr.latest_step()}) is kept. Free disk space or fix the "
      "storage, then rerun the same command to resume from it.")


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict | None = None,
         force: bool = False) -> bool:
  """Save `state` (and the iterator's JSON state) at `step` if due; True when a save started."""
  if not (force or mngr.should_save(step)):
    return False
  meta = {"data": data_state, "fingerprint": fingerprint(state)}
  try:
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=force)
  except Exception as e:  # a background write of an earlier step may surface here too
    raise _failed(mngr, step, e) from e


def wait(mngr: ocp.CheckpointManager) -> None:
  """Block until pending writes are committed; raises CheckpointError if one failed."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _failed(mngr, "(pending)", e) from e


def restore(mngr: ocp.CheckpointManager, target, step: int | None = None):
  """(state, data_state or None) at `step` (default latest), in `target`'s structure, dtypes and
  shardings (arrays or ShapeDtypeStructs)."""
  step = mngr.latest_step() if step is None else step
  where = pathlib.Path(mngr.directory) / str(step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise CheckpointCorrupt(f"checkpoint {where} is unreadable ({type(e).__name__}: {first})"
                            ) from e
  meta = out["meta"]
  if not isinstance(meta, dict) or "fingerprint" not in meta:
    raise CheckpointCorrupt(f"checkpoint {where} is unreadable: its meta item lacks the state "
                            "fingerprint")
  if fingerprint(out["state"]) != meta["fingerprint"]:
    raise CheckpointCorrupt(f"checkpoint {where} is unreadable: array contents do not match the "
                            "fingerprint saved with them (garbled files)")
  return out["state"], meta.get("data")


def restore_newest_readable(mngr: ocp.CheckpointManager, target):
  """(step, state, data_state) from the newest checkpoint that reads back; None if there are none.

  Unreadable newer steps are moved to `<checkpoints>/../corrupt/<step>` with a warning naming
  them, so the stage can save those steps again. If no step reads back, nothing is moved and
  CheckpointCorrupt is raised: that is more often a changed model config than damage.
  """
  bad = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, data = restore(mngr, target, step)
    except CheckpointCorrupt as e:
      bad.append((step, e))
      continue
    for b, e in bad:
      where = pathlib.Path(mngr.directory) / str(b)
      aside = where.parent.parent / "corrupt" / str(b)
      aside.parent.mkdir(parents=True, exist_ok=True)
      if aside.exists():
        shutil.rmtree(aside)
      shutil.move(str(where), str(aside))
      log.warning("%s; moved it to %s and resuming from step %d instead", e, aside, step)
    if bad:
      mngr.reload()
    return step, state, data
  if bad:
    raise CheckpointCorrupt(
        f"no checkpoint under {mngr.directory} reads back (newest: {bad[0][1]}). If the model "
        "config changed since they were written, use a new --workdir; if they are damaged, "
        f"delete {mngr.directory} to start this stage over")
  return None


def write_json_atomic(path: pathlib.Path, obj) -> None:
  """Write JSON so a reader sees the old file or the new one, never half of one."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(obj, indent=2))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_params(path: pathlib.Path, params) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path.absolute(), params, force=True)


def load_params_as_saved(path: pathlib.Path, sharding: jax.sharding.Sharding) -> dict:
  """Params as they were saved (tree, shapes, dtypes from the checkpoint), every leaf placed
  with `sharding`."""
  if not path.exists():
    raise FileNotFoundError(f"no saved params at {path}; rerun the stage that writes them")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      meta = ckptr.metadata(path.absolute())
      tree = getattr(meta, "item_metadata", meta)
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                              getattr(tree, "tree", tree))
      return ckptr.restore(path.absolute(), abstract)
  except Exception as e:
    raise ValueError(f"the saved params at {path} are unreadable ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:200]})") from None


def load_params(path: pathlib.Path, target):
  """Params saved by a finished stage, restored into `target`'s structure and shardings."""
  if not path.exists():
    raise FileNotFoundError(f"no saved params at {path}; rerun the stage that writes them")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(path.absolute(), abstract)
  except Exception as e:
    raise ValueError(
        f"the saved params at {path} are unreadable ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200]}); delete {path.parent / 'DONE.json'} and rerun to "
        "write them again from that stage's last checkpoint") from None
