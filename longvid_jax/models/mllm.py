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
                    deterministic: bool = True, query_mask: jax.Array | None = None
                    ) -> tuple[jax.Array, Reduced]:
    """tokens[B,T,h,w,C] → embeds[B,N,D] plus the reducer's output (mask, losses)."""
    red = self.reducer(f, query=query, deterministic=deterministic, query_mask=query_mask)
    return self.projector(red.tokens), red

  def question(self, input_ids: jax.Array, query_mask: jax.Array) -> jax.Array:
    """The question's token embeddings [B,L,D], the query of text-guided reducers. Only the
    tokens `query_mask` marks are real; the rest must be masked by the reducer."""
    ids = jnp.where(query_mask.astype(bool) & (input_ids != self.video_token_id), input_ids, 0)
    return self.llm.embed(ids)

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
               query_mask: jax.Array | None = None, deterministic: bool = True,
               logits_at: jax.Array | None = None) -> jax.Array:
    """Next-token logits[B,L,V] for a prompt whose placeholders stand for the video, or
    logits[B,K,V] at the positions `logits_at[B,K]` only.

    `query_mask[B,L]` marks the question's tokens (data.prompts.query_mask); given, their
    embeddings are the reducer's query. It must not cover the answer, or a text-guided reducer
    would see what it is asked to predict.
    """
    if features is None:
      if frames is None:
        raise ValueError("VideoLLM needs `frames` or precomputed `features`")
      features = self.features(frames)
    if query_mask is None and self.is_initializing():
      # build the text-guided path too, so params never depend on the first batch's keys
      query_mask = jnp.zeros_like(input_ids)
    query = None if query_mask is None else self.question(input_ids, query_mask)
    visual, red = self.visual_embeds(features, query=query, deterministic=deterministic,
                                     query_mask=query_mask)
    embeds, mask = self.splice(input_ids, attention_mask, visual, red.mask)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return self.llm(embeds, positions, mask, logits_at=logits_at)


MODEL_INPUTS = ("input_ids", "attention_mask", "frames", "features", "query_mask")


def model_inputs(batch: dict) -> dict:
  """The keys of a data batch that VideoLLM.__call__ takes; labels and ids stay behind."""
  return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def lm_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array,
            target_index: jax.Array | None = None):
  """Mean next-token cross-entropy over positions where loss_mask[B,L] marks the *target*.

  With `target_index[B,K]` (the data's `max_targets`), logits[B,K,V] are the model's at
  `logits_positions(target_index)`, one per listed target; 0 entries are padding."""
  if target_index is None:
    logits, weights, targets = logits[:, :-1], loss_mask[:, 1:], input_ids[:, 1:]
  else:
    weights = target_index > 0
    targets = jnp.take_along_axis(input_ids, target_index, axis=1)
  weights = weights.astype(jnp.float32)
  # placeholders may lie outside the vocabulary; they are never targets
  targets = jnp.where(weights > 0, targets, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  n = jnp.maximum(weights.sum(), 1.0)
  acc = ((logits.argmax(-1) == targets) * weights).sum() / n
  return (ce * weights).sum() / n, {"token_accuracy": acc}


def logits_positions(target_index: jax.Array) -> jax.Array:
  """Where the logits that predict the tokens at `target_index` are: one position earlier."""
  return jnp.maximum(target_index - 1, 0)
