"""One training stage: a loss, the groups it trains, a data stream and a checkpoint directory.

A stage resumes from its own newest readable checkpoint if it has one; otherwise it starts from
the params it is given (the previous stage's result). The step's RNG key is fold_in(seed, step)
and the data iterator's state is saved with each checkpoint, so a resumed stage sees exactly the
batches and randomness an uninterrupted one would.

Faults: every step reports whether its loss and gradients were finite. A non-finite step never
changes params or optimiser state; `nan_policy` then says whether to go on ("skip", counted in
the `skipped` metric) or stop ("stop": raise, keeping the last good checkpoint). A preemption
request (SIGTERM/SIGINT, see `PreemptionGuard`) saves a checkpoint at the next step boundary and
ends the stage with status "preempted".
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import signal
import shutil
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from longvid_jax.models.mllm import VideoLLM
from longvid_jax.train import checkpoint, losses, optim
from longvid_jax.train.metrics import MetricWriter

log = logging.getLogger(__name__)

@dataclasses.dataclass
class StageResult:
  name: str
  status: str  # done | skipped | preempted
  steps: int = 0
  first_loss: float | None = None  # mean over the first quarter of logged steps
  final_loss: float | None = None  # mean over the last quarter
  seconds: float = 0.0
  checkpoint: str | None = None
  note: str | None = None


NAN_POLICIES = ("stop", "skip")
ID_KEYS = ("ids", "id", "record_id", "video_id")  # host-side batch keys naming its records


class PreemptionGuard:
  """While active, SIGTERM and SIGINT only set `requested`; the training loop polls it, saves and
  returns. A second SIGINT raises KeyboardInterrupt at once (Ctrl-C twice to abandon)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def __call__(self) -> bool:
    return self.requested is not None

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    log.warning("%s received: saving a checkpoint at the next step boundary, then exiting",
                self.requested)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


def train_state(params, opt_state, step=None, skipped=None) -> dict:
  """The one train-state layout (what checkpoints hold and each step returns); step and skip
  counters start at zero."""
  zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731 - two buffers: the step donates both
  return {"params": params, "opt_state": opt_state, "step": zero() if step is None else step,
          "skipped": zero() if skipped is None else skipped}


def make_train_step(model: VideoLLM, kind: str, tx: optax.GradientTransformation,
                    trainable) -> Callable:
  """Jitted (state, batch, rng) → (state, metrics). A step whose loss or trained gradients are
  not finite leaves params and optimiser state as they were and counts itself in `skipped`."""
  loss_fn = losses.LOSSES.get(kind).make(model)

  def step(state, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, rng)
    trained = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    grad_norm = optax.global_norm(trained)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    skipped = state["skipped"] + (~finite).astype(jnp.int32)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite,
               "skipped": skipped}
    return train_state(keep(params, state["params"]), keep(opt_state, state["opt_state"]),
                       state["step"] + 1, skipped), metrics

  return jax.jit(step, donate_argnums=0)


def _batch_ids(batch: dict) -> list | None:
  """Pop the record ids a batch carries (they stay on the host; the step never sees them)."""
  found = [np.asarray(batch.pop(key)).reshape(-1).tolist() for key in ID_KEYS if key in batch]
  return found[0] if found else None


def _poison(batch: dict) -> dict:
  """A copy of `batch` whose frames are NaN: the `debug_nan_steps` fault-injection hook."""
  return {**batch, "frames": np.full(np.shape(batch["frames"]), np.nan, np.float32)}


def _open_iterator(batches: Callable[[int], Iterator[dict]], start: int, saved: dict | None,
                   name: str):
  """(iterator, the start it was created with): the saved iterator state when there is one."""
  if saved and "iterator" in saved:
    it = batches(int(saved["start"]))
    try:
      it.set_state(saved["iterator"])
      return it, int(saved["start"])
    except Exception as e:  # a pipeline change can make an old state unusable
      log.warning("stage %s: cannot restore the data iterator state (%s); reading from batch %d",
                  name, e, start)
  return batches(start), start


def snapshot_dir(stage_dir: pathlib.Path, step: int) -> pathlib.Path:
  return stage_dir / "snapshots" / f"{step:07d}"


def run_stage(name: str, index: int, total: int, cfg, model: VideoLLM, params,
              batches: Callable[[int], Iterator[dict]], stage_dir: pathlib.Path,
              seed: int, put_batch: Callable[[dict], Any] = lambda b: b,
              preempted: Callable[[], bool] = lambda: False) -> tuple[Any, StageResult]:
  """Train `params` for `cfg.steps` steps; returns the final params and a summary record.

  `batches(s)` iterates batches s, s+1, ...; if it has `get_state`/`set_state` (a Grain
  iterator) its state travels with each checkpoint. `preempted()` is polled every step.
  """
  stage_dir.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  policy = cfg.nan_policy
  if policy not in NAN_POLICIES:
    raise ValueError(f"stages.{name}.nan_policy={policy!r}: choose one of {NAN_POLICIES}")
  poison = {int(s) for s in (cfg.debug_nan_steps or ())}
  keep = bool(cfg.keep_checkpoints)
  tx = optim.make_optimizer(cfg, params)
  trainable = optim.trainable_mask(params, cfg.trainable)
  state = train_state(params, optim.init_opt_state(tx, params))
  ckpt_dir = stage_dir / "checkpoints"
  mngr = checkpoint.manager(ckpt_dir, cfg.checkpoint_every)
  start, saved_data = 0, None
  restored = checkpoint.restore_newest_readable(mngr, state)
  if restored is not None:
    start, state, saved_data = restored
    log.info("stage %s: resuming from step %d", name, start)
  writer = MetricWriter(stage_dir, start)
  step_fn = make_train_step(model, cfg.loss, tx, trainable)
  base_rng = jax.random.key(seed)
  elapsed0 = writer.elapsed
  bar = tqdm(total=cfg.steps, initial=start, desc=f"stage {index + 1}/{total} {name}",
             unit="step", dynamic_ncols=True, leave=True)
  it, it_start = _open_iterator(batches, start, saved_data, name)

  def data_state():
    return ({"start": it_start, "iterator": it.get_state()} if hasattr(it, "get_state")
            else None)

  def check(done: int, finite, ids) -> None:
    """Act on step `done`'s finite flag (fetched one step late, so the device never idles)."""
    if bool(finite):
      return
    which = f"step {done}" + (f" (records {ids})" if ids is not None else "")
    if policy == "skip":
      log.warning("stage %s: non-finite loss or gradients at %s; update skipped", name, which)
      return
    checkpoint.wait(mngr)
    last = mngr.latest_step()
    kept = (f"the last good checkpoint (step {last}) is kept in {ckpt_dir}" if last is not None
            else f"there is no checkpoint yet in {ckpt_dir} (a rerun starts the stage over)")
    raise FloatingPointError(
        f"stage {name}: non-finite loss or gradients at {which}; the update was not applied and "
        f"{kept}. Lower the learning rate, inspect that batch, or set "
        f"stages.{name}.nan_policy='skip'.")

  pending = None
  status, step = "done", start
  try:
    for step in range(start, cfg.steps):
      batch = next(it)
      ids = _batch_ids(batch)
      done = step + 1
      if done in poison:
        batch = _poison(batch)
      state, metrics = step_fn(state, put_batch(batch), jax.random.fold_in(base_rng, step))
      if pending is not None:
        check(*pending)
      pending = (done, metrics["finite"], ids)
      log_now = done % cfg.log_every == 0 or done == cfg.steps or step == start
      stop = preempted()
      # every checkpoint_every steps exactly (orbax's own check skips a step while a write is
      # still in progress), so which steps exist never depends on timing. The last step's train
      # state is only saved when checkpoints are kept: otherwise the params written next are
      # the stage's result and the state would be deleted unread.
      last, periodic = done == cfg.steps, done % cfg.checkpoint_every == 0
      save_now = stop or (last or periodic if keep else periodic and not last)
      snap_now = bool(cfg.snapshot_every) and done % cfg.snapshot_every == 0 and not last
      if log_now or save_now or snap_now:  # never log or save a step before its flag is known
        check(*pending)
        pending = None
      if log_now:
        scalars = jax.device_get(metrics)
        del scalars["finite"]
        scalars["elapsed"] = elapsed0 + time.time() - t_start
        writer.write(done, scalars)
        bar.set_postfix(loss=f"{float(scalars['loss']):.4f}")
      if save_now:
        checkpoint.save(mngr, done, state, data_state(), force=True)
      if snap_now:  # the last step's params are the stage's own
        checkpoint.save_params(snapshot_dir(stage_dir, done), state["params"])
      bar.update(1)
      if stop and done < cfg.steps:
        status, step = "preempted", done
        break
    else:
      step = cfg.steps
    if pending is not None:
      check(*pending)
    checkpoint.wait(mngr)
  except BaseException:
    with contextlib.suppress(Exception):  # keep the original error, not a pending write's
      mngr.close()
    raise
  else:
    mngr.close()
  finally:
    bar.close()
    writer.close()
  rows = [r for r in writer.rows if r.get("loss") is not None]
  k = max(1, len(rows) // 4)  # average a window: single small batches are noisy
  summary = dict(
      name=name, steps=step,
      first_loss=float(np.mean([r["loss"] for r in rows[:k]])) if rows else None,
      final_loss=float(np.mean([r["loss"] for r in rows[-k:]])) if rows else None,
      seconds=round(elapsed0 + time.time() - t_start, 2))
  if status == "preempted":
    note = f"preempted at step {step}; rerun the same command to resume"
    log.warning("stage %s: %s", name, note)
    return state["params"], StageResult(status=status, note=note, **summary)
  # params are committed before DONE.json exists, so DONE.json always names usable params
  checkpoint.save_params(stage_dir / "params", state["params"])
  result = StageResult(status="done", checkpoint=str((stage_dir / "params").absolute()),
                       **summary)
  checkpoint.write_json_atomic(stage_dir / "DONE.json", dataclasses.asdict(result))
  if not keep:
    # they only serve to resume this stage; with an LLM in the optimiser they are gigabytes
    shutil.rmtree(ckpt_dir, ignore_errors=True)
  return state["params"], result
