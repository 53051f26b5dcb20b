"""Stage objectives by the name a stage's `loss` field gives. A new objective is one function
here, registered in `LOSSES` with what it needs of the data and the model."""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from longvid_jax.models.mllm import VideoLLM, lm_loss, logits_positions, model_inputs
from longvid_jax.models.reducers.base import Autoencoder
from longvid_jax.registry import Registry

LossFn = Callable  # (params, batch, rng) -> (loss, metrics)


@dataclasses.dataclass(frozen=True)
class Loss:
  make: Callable[[VideoLLM], LossFn]
  needs_text: bool  # examples must carry tokens (a task other than "reconstruction")
  needs_autoencoder: bool  # the reducer must implement `Autoencoder`; else the stage is skipped


LOSSES: Registry[Loss] = Registry("stage loss")


def _reconstruction(model: VideoLLM) -> LossFn:
  def loss_fn(params, batch, rng):
    def f(m):
      feats = batch["features"] if "features" in batch else m.features(batch["frames"])
      return m.reconstruction_loss(feats, deterministic=False)
    return nn.apply(f, model)({"params": params}, rngs={"noise": rng})
  return loss_fn


def _lm(model: VideoLLM) -> LossFn:
  def loss_fn(params, batch, rng):
    at = batch.get("target_index")
    logits = model.apply({"params": params}, **model_inputs(batch), rngs={"noise": rng},
                         logits_at=None if at is None else logits_positions(at))
    return lm_loss(logits, batch["input_ids"], batch["loss_mask"], at)
  return loss_fn


LOSSES.register("reconstruction")(Loss(_reconstruction, needs_text=False, needs_autoencoder=True))
LOSSES.register("lm")(Loss(_lm, needs_text=True, needs_autoencoder=False))


def applies(name: str, model: VideoLLM) -> bool:
  """Whether objective `name` has anything to train in `model`."""
  return not LOSSES.get(name).needs_autoencoder or isinstance(model.reducer, Autoencoder)
