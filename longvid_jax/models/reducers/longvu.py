"""LongVU's spatial reductions (Shen et al. 2024): cross-modal frame selection within a token
budget, then spatial token compression (STC).

Cross-modal query. When T·H·W exceeds `budget`, only N_h = ⌊(budget − T·h·w)/(H·W − h·w)⌋ frames
keep their full H×W grid; the others are average-pooled to the low-resolution h×w grid
(stride `low_res_stride`, avgpool3d's edge padding). Which frames stay full:
  - with `query[B,Lq,D]`: the question's embeddings in the LLM input space (the LLM's token
    embeddings of the question; D need not equal C). A learned linear map `query_proj` (D → C)
    takes them into the visual width; each query token attends (softmax over all T·H·W visual
    tokens, 1/√C temperature) and the attention mass falling on each frame, averaged over the real
    query tokens (`query_mask[B,Lq]`, default all real), is the frame's relevance. The top-N_h
    frames stay full. LongVU scores in the LLM space after the projector; this reducer runs before
    it, hence the learned map. Selection is discrete, so to train `query_proj` the chosen tokens
    are scaled by 1 + r − stop_gradient(r) (r the frame's relevance): exactly 1 in the forward
    pass, yet the LM loss reaches the scores.
  - without a query: N_h evenly spaced frames stay full (a fixed, text-agnostic choice).
A budget below T·h·w (every frame low-resolution) raises ValueError.

STC. Frames are split into chunks of `chunk` (8); the first frame of each chunk is kept whole, and
a token of a later frame is dropped when its cosine similarity to the same position of the chunk's
first frame exceeds `threshold` (compared at the frame's own resolution: low-resolution frames
compare with the pooled first frame). threshold ≥ 1 disables STC.

Output: kept tokens in time-major order, packed to the front of a static
num_tokens = min(budget, T·H·W) slots; the rest are zero with mask False.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax.models.reducers.base import REDUCERS, Reduced
from longvid_jax.models.reducers.pooling import avgpool3d


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
  num = jnp.sum(a32 * b32, axis=-1)
  den = jnp.linalg.norm(a32, axis=-1) * jnp.linalg.norm(b32, axis=-1)
  return num / jnp.maximum(den, 1e-8)


def stc_keep(x: jax.Array, chunk: int, threshold: float) -> jax.Array:
  """x[B,T,N,C] → keep[B,T,N]: False where a token repeats the chunk's first frame (cos > θ)."""
  t = x.shape[1]
  anchor = (np.arange(t) // chunk) * chunk
  sim = _cosine(x, x[:, anchor])
  is_anchor = jnp.asarray(anchor == np.arange(t))[None, :, None]
  return is_anchor | ~(sim > threshold)


def frame_relevance(full: jax.Array, q: jax.Array, query_mask: jax.Array | None) -> jax.Array:
  """full[B,T,N,C], projected query q[B,Lq,C] → attention mass per frame [B,T] (sums to 1)."""
  b, t, n, c = full.shape
  logits = jnp.einsum("bqc,bnc->bqn", q.astype(jnp.float32),
                      full.reshape(b, t * n, c).astype(jnp.float32)) / math.sqrt(c)
  mass = jax.nn.softmax(logits, axis=-1).reshape(b, -1, t, n).sum(-1)  # [B,Lq,T]
  if query_mask is None:
    query_mask = jnp.ones(q.shape[:2], bool)
  qm = query_mask.astype(jnp.float32)[..., None]
  return jnp.sum(mass * qm, axis=1) / jnp.maximum(jnp.sum(qm, axis=1), 1.0)


@REDUCERS.register("longvu")
class LongVU(nn.Module):
  budget: int = 0  # max output tokens; 0: no limit (every frame full resolution)
  low_res_stride: int = 2
  chunk: int = 8
  threshold: float = 0.75

  def __post_init__(self):
    if self.budget < 0:
      raise ValueError(f"longvu budget must be ≥ 0 (0 means no limit), got {self.budget}")
    if int(self.low_res_stride) != self.low_res_stride or self.low_res_stride < 1:
      raise ValueError(f"longvu low_res_stride must be a positive integer, "
                       f"got {self.low_res_stride!r}")
    if int(self.chunk) != self.chunk or self.chunk < 1:
      raise ValueError(f"longvu chunk must be a positive integer, got {self.chunk!r}")
    if self.threshold < -1.0:
      raise ValueError(f"longvu threshold must be ≥ -1 (cosine similarity), got {self.threshold}")
    super().__post_init__()

  def low_grid(self, h: int, w: int) -> tuple[int, int]:
    return math.ceil(h / self.low_res_stride), math.ceil(w / self.low_res_stride)

  def num_full_frames(self, t: int, h: int, w: int) -> int:
    """N_h: how many frames fit at full resolution next to low-resolution others."""
    full = h * w
    low = math.prod(self.low_grid(h, w))
    if not self.budget or self.budget >= t * full:
      return t
    if self.budget < t * low:
      raise ValueError(
          f"longvu budget={self.budget} is below {t * low} = T·h·w, the cost of all {t} frames "
          f"at the {self.low_grid(h, w)} low resolution; raise budget or low_res_stride")
    return min(t, (self.budget - t * low) // (full - low))

  def num_tokens(self, t: int, h: int, w: int) -> int:
    self.num_full_frames(t, h, w)  # validates the budget
    return min(self.budget, t * h * w) if self.budget else t * h * w

  @nn.compact
  def __call__(self, tokens: jax.Array, query: jax.Array | None = None,
               deterministic: bool = True, query_mask: jax.Array | None = None) -> Reduced:
    del deterministic
    chex.assert_rank(tokens, 5)
    b, t, h, w, c = tokens.shape
    n_full, n_out = self.num_full_frames(t, h, w), self.num_tokens(t, h, w)
    hl, wl = self.low_grid(h, w)
    full = tokens.reshape(b, t, h * w, c)
    full = nn.with_logical_constraint(full, ("act_batch", None, "act_len", "act_embed"))

    rel = None
    if query is not None:  # project even when every frame fits, so params never depend on grid
      chex.assert_rank(query, 3)
      if query.shape[0] != b:
        raise ValueError(f"longvu query batch {query.shape[0]} != tokens batch {b}")
      q = nn.Dense(c, name="query_proj", kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, "embed")), bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ("embed",)))(query)  # [B,Lq,C]
      rel = frame_relevance(full, q, query_mask)  # [B,T]
    gate = jnp.ones((b, t), full.dtype)
    if n_full in (0, t):
      is_full = jnp.full((b, t), n_full == t)
    elif rel is None:
      idx = np.floor((np.arange(n_full) + 0.5) * t / n_full).astype(int)
      is_full = jnp.broadcast_to(jnp.zeros(t, bool).at[idx].set(True), (b, t))
    else:
      _, top = jax.lax.top_k(rel, n_full)
      is_full = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], top].set(True)
      gate = (1.0 + rel - jax.lax.stop_gradient(rel)).astype(full.dtype)

    keep_full = stc_keep(full, self.chunk, self.threshold)  # [B,T,HW]
    x = full
    keep = jnp.broadcast_to(is_full[..., None], keep_full.shape) & keep_full
    if n_full < t:
      low = avgpool3d(tokens, (1, self.low_res_stride, self.low_res_stride))
      low = low.reshape(b, t, hl * wl, c)
      keep_low = stc_keep(low, self.chunk, self.threshold)
      pad = h * w - hl * wl
      low = jnp.pad(low, ((0, 0), (0, 0), (0, pad), (0, 0)))
      keep_low = jnp.pad(keep_low, ((0, 0), (0, 0), (0, pad)))  # pads with False
      x = jnp.where(is_full[..., None, None], full, low)
      keep = jnp.where(is_full[..., None], keep_full, keep_low)
    x = x * gate[:, :, None, None]

    # Pack kept tokens to the front, preserving time-major order.
    x, keep = x.reshape(b, t * h * w, c), keep.reshape(b, t * h * w)
    order = jnp.argsort(~keep, axis=1, stable=True)[:, :n_out]
    keep = jnp.take_along_axis(keep, order, axis=1)
    x = jnp.take_along_axis(x, order[..., None], axis=1) * keep[..., None].astype(x.dtype)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    return Reduced(x, keep, {})
