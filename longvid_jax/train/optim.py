"""Per-stage optimisers: only the parameter groups a stage names are trained, the rest frozen."""

from __future__ import annotations

from typing import Sequence

import jax
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec


def trainable_mask(params, trainable: Sequence[str]):
  """True for params whose path starts with one of `trainable` ("projector", "reducer/encoder")."""
  prefixes = [tuple(p.split("/")) for p in trainable]
  flat = traverse_util.flatten_dict(params)
  labels = {k: any(k[:len(p)] == p for p in prefixes) for k in flat}
  return traverse_util.unflatten_dict(labels)


def check_trainable(params, trainable: Sequence[str]) -> None:
  flat = traverse_util.flatten_dict(params)
  for p in trainable:
    parts = tuple(p.split("/"))
    if not any(k[:len(parts)] == parts for k in flat):
      tops = sorted({"/".join(k[:2]) for k in flat})
      raise ValueError(f"trainable group {p!r} matches no parameters; groups look like: "
                       f"{', '.join(tops)}")


def grad_accum(cfg) -> int:
  k = int(cfg.grad_accum)
  if k < 1:
    raise ValueError(f"grad_accum must be >= 1, got {k}")
  return k


def make_optimizer(cfg, params) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay on the trainable groups; frozen groups get zero updates.

  With `cfg.grad_accum = k > 1` each step's gradient is averaged with the next k-1 before one
  optimiser update (the update is zero in between), so a stage of `steps` batches of
  `batch_size` makes steps // k updates on an effective batch of k * batch_size. The schedule
  (warmup_steps, steps) counts batches, like everything else in a stage.
  """
  check_trainable(params, cfg.trainable)
  k = grad_accum(cfg)
  warmup = max(1, int(cfg.warmup_steps) // k)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=warmup,
      decay_steps=max(int(cfg.steps) // k, warmup + 1), end_value=cfg.lr * 0.1)
  train = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask(params, cfg.trainable))
  tx = optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)
  return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation() if k > 1 else tx


def opt_state_shardings(tx: optax.GradientTransformation, params):
  """Shardings for `tx.init(params)`: each moment (mu, nu, accumulated grads) like its param,
  counters replicated. Left to itself the compiler replicates the zeros init creates, which
  multiplies optimiser memory by the number of devices."""
  flat = {k: v.sharding for k, v in traverse_util.flatten_dict(params).items()}
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
  mesh = next(iter(flat.values())).mesh

  def pick(path, leaf):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for i in range(len(keys)):  # the param's path ends the state leaf's path
      if keys[i:] in flat and shapes[keys[i:]] == leaf.shape:
        return flat[keys[i:]]
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params))


def init_opt_state(tx: optax.GradientTransformation, params):
  """The optimiser state, created already sharded like the params it tracks."""
  return jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params))(params)
