"""Decoder-only language model of the Llama / Qwen2 family (RMSNorm, RoPE, GQA, SwiGLU).

Parameter names follow the Hugging Face layout (`layers_i/self_attn/q_proj`, ...) so checkpoint
conversion is a name map, not a rewrite. Weights and activations only name their logical axes;
the config's rules decide how they are sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  vocab_size: int = 49152
  hidden_size: int = 576
  intermediate_size: int = 1536
  num_layers: int = 30
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int | None = None  # default hidden_size // num_heads
  rope_theta: float = 10000.0
  rms_eps: float = 1e-5
  tie_embeddings: bool = True
  qkv_bias: bool = False  # Qwen2 has q/k/v biases, Llama does not
  max_position: int = 8192
  dtype: str = "float32"  # compute dtype; params stay float32

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")


def _dense(features: int, axes: tuple[str, str], bias: bool, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class RMSNorm(nn.Module):
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding in the half-split layout: x[B,L,N,H], positions[B,L]."""
  half = x.shape[-1] // 2
  freqs = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs  # [B,L,half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    hd = cfg.dim_per_head
    b, l, _ = x.shape
    q = _dense(cfg.num_heads * hd, ("embed", "heads"), cfg.qkv_bias, dt, "q_proj")(x)
    k = _dense(cfg.num_kv_heads * hd, ("embed", "kv"), cfg.qkv_bias, dt, "k_proj")(x)
    v = _dense(cfg.num_kv_heads * hd, ("embed", "kv"), cfg.qkv_bias, dt, "v_proj")(x)
    q = rope(q.reshape(b, l, cfg.num_heads, hd), positions, cfg.rope_theta)
    k = rope(k.reshape(b, l, cfg.num_kv_heads, hd), positions, cfg.rope_theta)
    v = v.reshape(b, l, cfg.num_kv_heads, hd)
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])  # GQA handled natively
    out = out.reshape(b, l, cfg.num_heads * hd)
    return _dense(cfg.hidden_size, ("heads", "embed"), False, dt, "o_proj")(out)


class MLP(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    gate = _dense(cfg.intermediate_size, ("embed", "mlp"), False, dt, "gate_proj")(x)
    up = _dense(cfg.intermediate_size, ("embed", "mlp"), False, dt, "up_proj")(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return _dense(cfg.hidden_size, ("mlp", "embed"), False, dt, "down_proj")(h)


class DecoderLayer(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    h = RMSNorm(cfg.rms_eps, dt, name="input_layernorm")(x)
    x = x + Attention(cfg, name="self_attn")(h, positions, mask)
    h = RMSNorm(cfg.rms_eps, dt, name="post_attention_layernorm")(x)
    x = x + MLP(cfg, name="mlp")(h)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class DecoderLM(nn.Module):
  """embeds[B,L,D] → logits[B,L,V]; `embed` maps token ids to the same space."""

  cfg: LLMConfig

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype),
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                    ("vocab", "embed")))
    self.layers = [DecoderLayer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_eps, jnp.dtype(cfg.dtype))
    if not cfg.tie_embeddings:
      self.lm_head = _dense(cfg.vocab_size, ("embed", "vocab"), False, jnp.dtype(cfg.dtype),
                            "lm_head")

  def embed(self, tokens: Array) -> Array:
    return self.embed_tokens(tokens)

  def __call__(self, embeds: Array, positions: Array, attention_mask: Array) -> Array:
    """attention_mask[B,L] is 1 on real tokens; attention is causal over real tokens."""
    l = embeds.shape[1]
    causal = jnp.tril(jnp.ones((l, l), dtype=bool))
    mask = causal[None] & attention_mask[:, None, :].astype(bool)  # [B,L,L]
    x = nn.with_logical_constraint(embeds, ("act_batch", "act_len", "act_embed"))
    for layer in self.layers:
      x = layer(x, positions, mask)
    x = self.norm(x)
    if self.cfg.tie_embeddings:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32),
                                      ("act_batch", "act_len", "act_vocab"))
