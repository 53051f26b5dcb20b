"""Jitted autoregressive generation with a KV cache, from prompt embeddings or token ids.

Prompts are left-padded so every row's last prompt token sits in the same slot and decoding
writes one slot per step for the whole batch; positions count real tokens only, so a padded row
generates exactly what it would alone. The multimodal model calls `generate` with the embeddings
it spliced (text + visual); `generate_ids` is the text-only convenience.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax.models.llm import DecoderLM, KVCache


@dataclasses.dataclass(frozen=True)
class Generated:
  tokens: np.ndarray  # [B,N] generated ids, pad_id after a row stopped
  lengths: np.ndarray  # [B] generated tokens per row, the stop token included

  def rows(self) -> list[list[int]]:
    return [t[:n].tolist() for t, n in zip(self.tokens, self.lengths)]


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: jax.Array,
                  top_p: jax.Array) -> jax.Array:
  """logits[B,V] → ids[B]: temperature, then nucleus (top-p) sampling."""
  logits = logits / jnp.maximum(temperature, 1e-6)
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
  keep = before < top_p  # always keeps the most likely token
  cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  return jax.random.categorical(rng, logits, axis=-1)


@functools.lru_cache(maxsize=32)
def _compiled(model: DecoderLM, max_new_tokens: int):
  """One program per (model, prompt shape, max_new_tokens): greedy vs sampling, stop ids and
  pad id are runtime values so changing them does not recompile."""
  cfg = model.cfg

  def run(params, embeds, mask, positions, rng, temperature, top_p, stops, pad_id):
    b, length, _ = embeds.shape
    variables = {"params": params}
    cache = KVCache.init(cfg, b, length + max_new_tokens)
    logits, cache = model.apply(variables, embeds, positions, mask, cache=cache, last_only=True)
    next_pos = jnp.max(jnp.where(mask.astype(bool), positions, -1), axis=1) + 1

    def pick(logits, key):
      return jax.lax.cond(
          temperature > 0,
          lambda: sample_logits(logits, key, temperature, top_p).astype(jnp.int32),
          lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))

    def cond(state):
      step, _, _, _, done, _, _, _ = state
      return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
      step, tokens, lengths, cache, done, logits, pos, rng = state
      rng, key = jax.random.split(rng)
      tok = jnp.where(done, pad_id, pick(logits[:, -1], key))
      tokens = jax.lax.dynamic_update_slice_in_dim(tokens, tok[:, None], step, axis=1)
      lengths = lengths + (~done).astype(jnp.int32)
      done = done | jnp.isin(tok, stops)
      emb = model.apply(variables, tok[:, None], method=DecoderLM.embed)
      logits, cache = model.apply(variables, emb, pos[:, None], jnp.ones((b, 1), jnp.int32),
                                  cache=cache)
      return step + 1, tokens, lengths, cache, done, logits, pos + 1, rng

    state = (jnp.zeros((), jnp.int32), jnp.full((b, max_new_tokens), pad_id, jnp.int32),
             jnp.zeros((b,), jnp.int32), cache, jnp.zeros((b,), bool), logits, next_pos, rng)
    state = jax.lax.while_loop(cond, body, state)
    return state[1], state[2]

  return jax.jit(run)


def generate(model: DecoderLM, params, embeds: jax.Array, attention_mask: jax.Array, *,
             max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             stop_ids: Sequence[int] = (), pad_id: int = 0, rng: jax.Array | None = None,
             positions: jax.Array | None = None) -> Generated:
  """Continue left-padded prompts embeds[B,L,D] (attention_mask[B,L] 1 on real tokens).

  temperature 0 is greedy; otherwise samples from the top-p nucleus. Rows stop at any of
  `stop_ids` (the stop token is kept) or after `max_new_tokens`. `positions` default to
  counting real tokens, as in training.
  """
  chex.assert_rank(embeds, 3)
  chex.assert_shape(attention_mask, embeds.shape[:2])
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
  mask = jnp.asarray(attention_mask, jnp.int32)
  if not bool(jnp.all(mask[:, -1] == 1)):
    raise ValueError("prompts must be left-padded: attention_mask[:, -1] must be 1 in every row")
  if positions is None:
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  if rng is None:
    if temperature > 0:
      raise ValueError("sampling (temperature > 0) needs an rng key")
    rng = jax.random.key(0)
  stops = [int(i) for i in stop_ids]
  stops += [-1] * (8 * max(1, -(-len(stops) // 8)) - len(stops))  # -1 never matches; few shapes
  fn = _compiled(model, int(max_new_tokens))
  tokens, lengths = fn(params, jnp.asarray(embeds), mask, jnp.asarray(positions, jnp.int32), rng,
                       jnp.float32(temperature), jnp.float32(top_p),
                       jnp.asarray(stops, jnp.int32), jnp.int32(pad_id))
  return Generated(np.asarray(tokens), np.asarray(lengths))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Token lists → ids[B,L], mask[B,L], right-aligned; L rounded up to `multiple` so nearby
  prompt lengths share one compiled program."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = -(-max(len(p) for p in prompts) // multiple) * multiple
  ids = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    ids[row, width - len(p):] = p
    mask[row, width - len(p):] = 1
  return ids, mask


def generate_ids(model: DecoderLM, params, prompts: Sequence[Sequence[int]], *,
                 pad_id: int = 0, pad_multiple: int = 1, **kwargs) -> list[list[int]]:
  """Token-id prompts of any lengths → generated ids per prompt (stop token kept)."""
  ids, mask = left_pad(prompts, pad_id, pad_multiple)
  embeds = model.apply({"params": params}, jnp.asarray(ids), method=DecoderLM.embed)
  return generate(model, params, embeds, mask, pad_id=pad_id, **kwargs).rows()


def chat(model: DecoderLM, params, tokenizer, messages: list[dict], **kwargs) -> str:
  """One assistant reply to a conversation, through the tokenizer's chat template."""
  prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
  kwargs.setdefault("stop_ids", tokenizer.stop_ids)
  out = generate_ids(model, params, [prompt], pad_id=tokenizer.pad_id, **kwargs)[0]
  return tokenizer.decode(out, skip_special_tokens=True)
