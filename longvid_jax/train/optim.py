"""Per-stage optimisers: only the parameter groups a stage names are trained, the rest frozen."""

from __future__ import annotations

from typing import Sequence

import jax
import optax
from flax import traverse_util


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


def make_optimizer(cfg, params) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay on the trainable groups; frozen groups get zero updates."""
  check_trainable(params, cfg.trainable)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=max(1, int(cfg.warmup_steps)),
      decay_steps=max(int(cfg.steps), int(cfg.warmup_steps) + 1), end_value=cfg.lr * 0.1)
  train = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask(params, cfg.trainable))
  return optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)
