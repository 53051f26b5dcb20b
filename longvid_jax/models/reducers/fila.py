"""FiLA-Video-style scene merging: every k consecutive frames become one frame's worth of tokens.

Modes (`mode`):
  weighted   learnable per-position weights W[k,H·W,C], initialised to 1/k, so the module starts
             as temporal averaging and learns which frame matters where (FiLA's dynamic fusion);
  attention  the middle frame's tokens attend (pre-LN, multi-head, residual) to all k·H·W tokens
             of their scene;
  average    plain temporal mean (parameter-free);
  bipartite  ToMe bipartite soft matching of the scene's k·H·W tokens down to tokens_per_scene
             (size-weighted, parameter-free).

A T that k does not divide is padded at the end by repeating the last frame (the avgpool3d policy),
so the last scene still averages real frames. For k a power of two, weighted fusion at
initialisation equals the average bit for bit (1/k is exact); otherwise to rounding. The fusion
weights are per grid position, so a weighted model is tied to the H×W grid it was built on.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.reducers.base import REDUCERS, Reduced, TextAgnostic
from longvid_jax.models.reducers.layers import ACT, CrossAttention, check_heads, layer_norm
from longvid_jax.models.reducers.pooling import pad_to_multiple
from longvid_jax.models.reducers.tome import tome_merge

MODES = ("weighted", "attention", "average", "bipartite")


@REDUCERS.register("fila")
class FiLAMerge(TextAgnostic, nn.Module):
  k: int = 4
  mode: str = "weighted"
  num_heads: int = 8
  tokens_per_scene: int = 0  # bipartite only; 0 means H·W (one frame's worth)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"fila mode {self.mode!r}: choose one of {MODES}")
    if int(self.k) != self.k or self.k < 1:
      raise ValueError(f"fila k (frames per scene) must be a positive integer, got {self.k!r}")
    if self.num_heads < 1:
      raise ValueError(f"fila num_heads must be ≥ 1, got {self.num_heads}")
    if self.tokens_per_scene < 0:
      raise ValueError(f"fila tokens_per_scene must be ≥ 0 (0 means H·W), "
                       f"got {self.tokens_per_scene}")
    super().__post_init__()

  def _per_scene(self, h: int, w: int) -> int:
    if self.mode != "bipartite" or not self.tokens_per_scene:
      return h * w
    if self.tokens_per_scene > self.k * h * w:
      raise ValueError(f"fila tokens_per_scene={self.tokens_per_scene} exceeds the "
                       f"k·H·W = {self.k * h * w} tokens of a scene; lower it")
    return self.tokens_per_scene

  def num_tokens(self, t: int, h: int, w: int) -> int:
    return math.ceil(t / self.k) * self._per_scene(h, w)

  @nn.compact
  def reduce(self, tokens: jax.Array) -> Reduced:
    b, _, h, w, c = tokens.shape
    k, n = self.k, h * w
    x = pad_to_multiple(tokens, (k, 1, 1))
    s = x.shape[1] // k
    x = x.reshape(b, s, k, n, c)  # [B,S,k,N,C]
    if self.mode == "average":
      out = jnp.mean(x, axis=2)
    elif self.mode == "weighted":
      wts = self.param("fusion_weights", nn.with_logical_partitioning(
          nn.initializers.constant(1.0 / k), (None, None, "embed")), (k, n, c))
      out = jnp.sum(x * wts.astype(x.dtype), axis=2)
    elif self.mode == "attention":
      check_heads(self.num_heads, c, "fila")
      mid = x[:, :, k // 2].reshape(b * s, n, c)
      scene = nn.with_logical_constraint(x.reshape(b * s, k * n, c), ACT)
      out = mid + CrossAttention(self.num_heads, name="attn")(
          layer_norm("norm_q")(mid), layer_norm("norm_kv")(scene))
    else:
      out, _ = tome_merge(x.reshape(b * s, k * n, c), self._per_scene(h, w))
    out = nn.with_logical_constraint(out.reshape(b, -1, c), ACT)
    return Reduced(out, jnp.ones(out.shape[:2], bool), {})
