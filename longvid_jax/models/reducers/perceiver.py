"""Perceiver resampler (Flamingo-style): learned latent queries cross-attend to every video token.

Each layer is pre-LN cross-attention (keys/values are the video tokens concatenated with the
latents, as in Flamingo, so latents also see each other) followed by a pre-LN MLP, both residual.
A fixed sinusoidal time encoding is added to the video tokens before attention: the encoder's
features already carry their spatial position, but nothing else tells the latents which frame a
token came from.

The query count is `num_queries`, or round(ratio·T·H·W) when that is 0. The learned latents are a
[N,C] parameter, so a model built from a ratio is tied to the grid it was initialised on; calling
it on another grid raises an error naming both counts.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.reducers.base import REDUCERS, Reduced, TextAgnostic
from longvid_jax.models.reducers.layers import (ACT, MLP, CrossAttention, check_heads,
                                                 layer_norm, sinusoid)


@REDUCERS.register("perceiver")
class PerceiverResampler(TextAgnostic, nn.Module):
  mixes_frames = True  # every latent reads every frame: no token belongs to one frame
  num_queries: int = 0
  ratio: float = 1 / 64
  depth: int = 2
  num_heads: int = 8
  mlp_ratio: int = 4
  time_encoding: bool = True

  def __post_init__(self):
    if self.num_queries < 0:
      raise ValueError(f"perceiver num_queries must be ≥ 0 (0 means use ratio), "
                       f"got {self.num_queries}")
    if self.num_queries == 0 and not 0 < self.ratio <= 1:
      raise ValueError(f"perceiver ratio must be in (0, 1], got {self.ratio}")
    for name in ("depth", "num_heads", "mlp_ratio"):
      if getattr(self, name) < 1:
        raise ValueError(f"perceiver {name} must be ≥ 1, got {getattr(self, name)}")
    super().__post_init__()

  def num_tokens(self, t: int, h: int, w: int) -> int:
    return self.num_queries or max(1, round(self.ratio * t * h * w))

  @nn.compact
  def reduce(self, tokens: jax.Array) -> Reduced:
    b, t, h, w, c = tokens.shape
    check_heads(self.num_heads, c, "perceiver")
    n = self.num_tokens(t, h, w)
    if self.has_variable("params", "latents"):
      have = self.get_variable("params", "latents")
      have = getattr(have, "value", have).shape[0]
      if have != n:
        raise ValueError(f"perceiver was initialised with {have} latent queries but this "
                         f"{t}×{h}×{w} grid asks for {n} (ratio={self.ratio}); set num_queries="
                         f"{have} or re-initialise for this grid")
    latents = self.param("latents", nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / math.sqrt(c)), (None, "embed")), (n, c))
    x = tokens
    if self.time_encoding:
      x = x + sinusoid(jnp.arange(t), c).astype(x.dtype)[None, :, None, None, :]
    x = nn.with_logical_constraint(x.reshape(b, t * h * w, c), ACT)
    lat = nn.with_logical_constraint(
        jnp.broadcast_to(latents.astype(x.dtype), (b, n, c)), ACT)
    for i in range(self.depth):
      q = layer_norm(f"layers_{i}_norm_q")(lat)
      kv = jnp.concatenate([layer_norm(f"layers_{i}_norm_kv")(x), q], axis=1)
      lat = lat + CrossAttention(self.num_heads, name=f"layers_{i}_attn")(q, kv)
      lat = lat + MLP(self.mlp_ratio, name=f"layers_{i}_mlp")(
          layer_norm(f"layers_{i}_norm_mlp")(lat))
      lat = nn.with_logical_constraint(lat, ACT)
    out = layer_norm("out_norm")(lat)
    return Reduced(out, jnp.ones((b, n), bool), {})
