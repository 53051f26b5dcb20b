"""The multimodal model: frames → encoder → reducer → projector → spliced into the LLM prompt.

Prompts carry one `<video>` placeholder token per visual token (the data pipeline expands the
placeholder to `reducer.num_tokens(T, H, W)` copies), so splicing is a gather with static shapes.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from longvid_jax.models.llm import DecoderLM
from longvid_jax.models.projector import MLPProjector
from longvid_jax.models.reducers import Reduced


class VideoLLM(nn.Module):
  encoder: nn.Module
  reducer: nn.Module
  projector: MLPProjector
  llm: DecoderLM
  video_token_id: int
  train_encoder: bool = False

  def features(self, frames: jax.Array) -> jax.Array:
    """frames[B,T,S,S,3] in [0,1] → tokens[B,T,h,w,C]; time is folded into the batch."""
    chex.assert_rank(frames, 5)
    b, t = frames.shape[:2]
    f = self.encoder(frames.reshape(b * t, *frames.shape[2:]))
    f = f.reshape(b, t, *f.shape[1:])
    return f if self.train_encoder else jax.lax.stop_gradient(f)

  def visual_embeds(self, f: jax.Array, query: jax.Array | None = None,
                    deterministic: bool = True) -> tuple[jax.Array, Reduced]:
    """tokens[B,T,h,w,C] → embeds[B,N,D] plus the reducer's output (mask, losses)."""
    red = self.reducer(f, query=query, deterministic=deterministic)
    return self.projector(red.tokens), red

  def reconstruction_loss(self, f: jax.Array, deterministic: bool = False):
    return self.reducer.reconstruction_loss(f, deterministic=deterministic)

  def splice(self, input_ids: jax.Array, attention_mask: jax.Array, visual: jax.Array,
             visual_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace the k-th placeholder of each row with visual[b, k]; padded visual tokens are
    masked out of attention."""
    is_vid = input_ids == self.video_token_id
    text = self.llm.embed(jnp.where(is_vid, 0, input_ids))  # the placeholder needs no embedding
    k = jnp.clip(jnp.cumsum(is_vid, axis=1) - 1, 0, visual.shape[1] - 1)
    gathered = jnp.take_along_axis(visual, k[..., None], axis=1).astype(text.dtype)
    embeds = jnp.where(is_vid[..., None], gathered, text)
    vis_ok = jnp.take_along_axis(visual_mask, k, axis=1)
    mask = attention_mask.astype(bool) & (~is_vid | vis_ok)
    return embeds, mask

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               frames: jax.Array | None = None, features: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Next-token logits[B,L,V] for a prompt whose placeholders stand for the video."""
    if features is None:
      if frames is None:
        raise ValueError("VideoLLM needs `frames` or precomputed `features`")
      features = self.features(frames)
    visual, red = self.visual_embeds(features, deterministic=deterministic)
    embeds, mask = self.splice(input_ids, attention_mask, visual, red.mask)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return self.llm(embeds, positions, mask)


def lm_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array):
  """Mean next-token cross-entropy over positions where loss_mask[B,L] marks the *target*."""
  weights = loss_mask[:, 1:].astype(jnp.float32)
  # placeholders may lie outside the vocabulary; they are never targets
  targets = jnp.where(weights > 0, input_ids[:, 1:], 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  n = jnp.maximum(weights.sum(), 1.0)
  acc = ((logits[:, :-1].argmax(-1) == targets) * weights).sum() / n
  return (ce * weights).sum() / n, {"token_accuracy": acc}
