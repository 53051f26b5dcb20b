"""Attention and MLP blocks shared by the learned reducers (Perceiver resampler, FiLA pooling).

Pre-LN, multi-head, no dropout; kernels and activations only name their logical axes.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

ACT = ("act_batch", "act_len", "act_embed")


def dense(features: int, axes: tuple[str, str], name: str) -> nn.Dense:
  return nn.Dense(features, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def check_heads(num_heads: int, width: int, what: str) -> None:
  if width % num_heads:
    raise ValueError(f"{what} num_heads={num_heads} must divide the token width C={width}; "
                     f"pick a divisor of {width}")


class CrossAttention(nn.Module):
  """q[B,Lq,C] attends to kv[B,Lk,C] → [B,Lq,C] (multi-head, output projected back to C)."""
  num_heads: int = 8

  @nn.compact
  def __call__(self, q: jax.Array, kv: jax.Array) -> jax.Array:
    b, lq, c = q.shape
    check_heads(self.num_heads, c, "attention")
    hd = c // self.num_heads
    qh = dense(c, ("embed", "heads"), "q_proj")(q).reshape(b, lq, self.num_heads, hd)
    kh = dense(c, ("embed", "heads"), "k_proj")(kv).reshape(b, -1, self.num_heads, hd)
    vh = dense(c, ("embed", "heads"), "v_proj")(kv).reshape(b, -1, self.num_heads, hd)
    qh = nn.with_logical_constraint(qh, ("act_batch", "act_len", "act_heads", None))
    out = jax.nn.dot_product_attention(qh, kh, vh).reshape(b, lq, c)
    return dense(c, ("heads", "embed"), "o_proj")(out)


class MLP(nn.Module):
  ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = nn.gelu(dense(self.ratio * c, ("embed", "mlp"), "fc1")(x))
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
    return dense(c, ("mlp", "embed"), "fc2")(h)


def sinusoid(positions: jax.Array, width: int) -> jax.Array:
  """positions[...] → [..., width] fixed sin/cos features (Transformer encoding), any width."""
  half = (width + 1) // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  ang = positions.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)[..., :width]
