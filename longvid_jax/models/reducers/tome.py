"""Token Merging (ToMe, Bolya et al. 2023): bipartite soft matching down to a target count.

One step splits the tokens into alternating sets A (even positions) and B (odd), links every A
token to its most cosine-similar B token, and merges the r most similar A tokens into their
partners. Merges are size-weighted means (x·size summed, then divided by the summed size), so a
merged token is the mean of every original token it absorbed and the sizes always sum to the input
count. A step removes at most ⌊N/2⌋ tokens, so larger reductions run several steps; every r is a
Python int, so shapes stay static under jit.

Without attention keys to match on (the reducer sits after the encoder), the tokens themselves are
the matching metric. Each output token remembers the earliest original position it covers, and the
output is sorted by it, so it stays in time-major order.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.reducers.base import REDUCERS, Reduced, TextAgnostic

UNITS = ("frame", "video")  # what one merge covers


def merge_schedule(n: int, target: int) -> list[int]:
  """Tokens removed per bipartite step to go from n to target (each step ≤ ⌊n/2⌋)."""
  if not 1 <= target <= n:
    raise ValueError(f"ToMe target must be in [1, {n}] for {n} input tokens, got {target}")
  steps = []
  while n > target:
    r = min(n - target, n // 2)
    steps.append(r)
    n -= r
  return steps


def _step(x, size, pos, r: int):
  """One bipartite merge on a single sample: x[N,C], size[N], pos[N] → N−r tokens."""
  xa, xb = x[::2], x[1::2]
  sa, sb = size[::2], size[1::2]
  pa, pb = pos[::2], pos[1::2]
  m = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
  scores = m[::2] @ m[1::2].T  # [Na,Nb]
  best, partner = scores.max(-1), scores.argmax(-1)
  order = jnp.argsort(-best, stable=True)
  src, keep = order[:r], order[r:]
  dst = partner[src]
  acc = (xb * sb[:, None]).at[dst].add(xa[src] * sa[src][:, None])
  sb = sb.at[dst].add(sa[src])
  xb = acc / sb[:, None]
  pb = pb.at[dst].min(pa[src])
  return (jnp.concatenate([xa[keep], xb.astype(x.dtype)]),
          jnp.concatenate([sa[keep], sb]), jnp.concatenate([pa[keep], pb]))


@functools.partial(jax.jit, static_argnames=("target",))
def tome_merge(x: jax.Array, target: int, size: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """x[B,N,C] (with optional token sizes[B,N], default 1) → (x[B,target,C], size[B,target]).

  The output keeps the original order of the earliest token each merged token covers.
  """
  chex.assert_rank(x, 3)
  b, n, _ = x.shape
  if size is None:
    size = jnp.ones((b, n), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(n), (b, n))
  for r in merge_schedule(n, target):
    x, size, pos = jax.vmap(lambda xi, si, pi, r=r: _step(xi, si, pi, r))(x, size, pos)
  order = jnp.argsort(pos, axis=-1)
  return (jnp.take_along_axis(x, order[..., None], axis=1),
          jnp.take_along_axis(size, order, axis=1))


@REDUCERS.register("tome")
class ToMe(TextAgnostic, nn.Module):
  """Merge each frame's (over="frame") or the whole video's (over="video") tokens.

  target: output tokens per frame / per video (0: `ratio` of that unit's input count, rounded,
  at least 1). Per frame keeps every frame represented; per video can spend tokens where the
  video changes, at O((T·H·W)²) matching cost.
  """
  target: int = 0
  ratio: float = 0.25
  over: str = "frame"  # "scope" is taken by flax Module

  def __post_init__(self):
    if self.over not in UNITS:
      raise ValueError(f"tome over {self.over!r}: choose one of {UNITS}")
    if self.target < 0:
      raise ValueError(f"tome target must be ≥ 0 (0 means use ratio), got {self.target}")
    if self.target == 0 and not 0 < self.ratio <= 1:
      raise ValueError(f"tome ratio must be in (0, 1], got {self.ratio}")
    super().__post_init__()

  @property
  def mixes_frames(self) -> bool:  # a merged token of the whole video can span frames
    return self.over == "video"

  def _unit_target(self, unit: int) -> int:
    k = self.target or max(1, round(self.ratio * unit))
    if k > unit:
      raise ValueError(f"tome target={k} exceeds the {unit} tokens per {self.over}; "
                       f"lower target")
    return k

  def num_tokens(self, t: int, h: int, w: int) -> int:
    if self.over == "frame":
      return t * self._unit_target(h * w)
    return self._unit_target(t * h * w)

  def reduce(self, tokens: jax.Array) -> Reduced:
    b, t, h, w, c = tokens.shape
    if self.over == "frame":
      x, _ = tome_merge(tokens.reshape(b * t, h * w, c), self._unit_target(h * w))
    else:
      x, _ = tome_merge(tokens.reshape(b, t * h * w, c), self._unit_target(t * h * w))
    x = nn.with_logical_constraint(x.reshape(b, -1, c), ("act_batch", "act_len", "act_embed"))
    return Reduced(x, jnp.ones(x.shape[:2], bool), {})

