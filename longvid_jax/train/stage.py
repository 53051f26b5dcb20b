"""One training stage: a loss, the groups it trains, a data stream and a checkpoint directory.

A stage resumes from its own latest checkpoint if it has one; otherwise it starts from the
params it is given (the previous stage's result). Batches are a pure function of the step, so a
resumed stage sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from longvid_jax.models.mllm import VideoLLM, lm_loss
from longvid_jax.train import checkpoint, optim
from longvid_jax.train.metrics import MetricWriter

log = logging.getLogger(__name__)

LOSSES = ("reconstruction", "lm")


@dataclasses.dataclass
class StageResult:
  name: str
  status: str  # done | skipped
  steps: int = 0
  first_loss: float | None = None  # mean over the first quarter of logged steps
  final_loss: float | None = None  # mean over the last quarter
  seconds: float = 0.0
  checkpoint: str | None = None
  note: str | None = None


def stage_loss(model: VideoLLM, kind: str) -> Callable:
  """(params, batch, rng) → (loss, metrics) for a stage's objective."""
  if kind == "reconstruction":
    def loss_fn(params, batch, rng):
      def f(m):
        feats = m.features(batch["frames"])
        return m.reconstruction_loss(feats, deterministic=False)
      return nn.apply(f, model)({"params": params}, rngs={"noise": rng})
  elif kind == "lm":
    def loss_fn(params, batch, rng):
      logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                           frames=batch["frames"], rngs={"noise": rng})
      return lm_loss(logits, batch["input_ids"], batch["loss_mask"])
  else:
    raise ValueError(f"stage loss {kind!r}: choose one of {LOSSES}")
  return loss_fn


def make_train_step(model: VideoLLM, kind: str, tx: optax.GradientTransformation,
                    trainable) -> Callable:
  loss_fn = stage_loss(model, kind)

  def step(state, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    trained = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(trained)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return jax.jit(step, donate_argnums=0)


def run_stage(name: str, index: int, total: int, cfg, model: VideoLLM, params,
              batches: Callable[[int], Iterator[dict]], stage_dir: pathlib.Path,
              seed: int, put_batch: Callable[[dict], Any] = lambda b: b) -> tuple[Any, StageResult]:
  """Train `params` for `cfg.steps` steps; returns the final params and a summary record."""
  stage_dir.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  tx = optim.make_optimizer(cfg, params)
  trainable = optim.trainable_mask(params, cfg.trainable)
  state = {"params": params, "opt_state": jax.jit(tx.init)(params),
           "step": jnp.zeros((), jnp.int32)}
  mngr = checkpoint.manager(stage_dir / "checkpoints", cfg.checkpoint_every)
  start = 0
  if mngr.latest_step() is not None:
    state = checkpoint.restore(mngr, state)
    start = int(state["step"])
    log.info("stage %s: resuming from step %d", name, start)
  writer = MetricWriter(stage_dir, start)
  step_fn = make_train_step(model, cfg.loss, tx, trainable)
  base_rng = jax.random.key(seed)
  elapsed0 = writer.elapsed
  bar = tqdm(total=cfg.steps, initial=start, desc=f"stage {index + 1}/{total} {name}",
             unit="step", dynamic_ncols=True, leave=True)
  it = batches(start)
  for step in range(start, cfg.steps):
    batch = put_batch(next(it))
    state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
    done = step + 1
    if done % cfg.log_every == 0 or done == cfg.steps or step == start:
      scalars = jax.device_get(metrics)
      if not math.isfinite(float(scalars["loss"])):
        raise FloatingPointError(
            f"stage {name}: loss is {float(scalars['loss'])} at step {done}; the last good "
            f"checkpoint (step {mngr.latest_step()}) is kept in {stage_dir / 'checkpoints'}. "
            "Lower the learning rate or inspect this step's batch.")
      scalars["elapsed"] = elapsed0 + time.time() - t_start
      writer.write(done, scalars)
      bar.set_postfix(loss=f"{float(scalars['loss']):.4f}")
    checkpoint.save(mngr, done, state, force=done == cfg.steps)
    bar.update(1)
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  save_params(stage_dir / "params", state["params"])
  rows = writer.rows
  k = max(1, len(rows) // 4)  # average a window: single small batches are noisy
  result = StageResult(
      name=name, status="done", steps=cfg.steps,
      first_loss=float(np.mean([r["loss"] for r in rows[:k]])),
      final_loss=float(np.mean([r["loss"] for r in rows[-k:]])),
      seconds=round(rows[-1]["elapsed"] if rows else time.time() - t_start, 2),
      checkpoint=str((stage_dir / "params").absolute()))
  (stage_dir / "DONE.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
  return state["params"], result


def save_params(path: pathlib.Path, params) -> None:
  with checkpoint.ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path.absolute(), params, force=True)


def load_params(path: pathlib.Path, target):
  """Params saved by a finished stage, restored into `target`'s structure and shardings."""
  if not path.exists():
    raise FileNotFoundError(f"no saved params at {path}; rerun the stage that writes them")
  abstract = jax.tree.map(checkpoint.ocp.utils.to_shape_dtype_struct, target)
  with checkpoint.ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path.absolute(), abstract)
