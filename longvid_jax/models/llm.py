"""Decoder-only language model of the Llama / Qwen2 family (RMSNorm, RoPE, GQA, SwiGLU).

Parameter names follow the Hugging Face layout (`layers_i/self_attn/q_proj`, ...) so checkpoint
conversion is a name map, not a rewrite. Weights and activations only name their logical axes;
the config's rules decide how they are sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


_HF_ARCH = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def remat_policy(name: str):
  """Config name → what `nn.remat` saves: False (no remat), None (save nothing), or a policy.

  `full` recomputes the whole layer in the backward pass (least memory); the named
  jax.checkpoint_policies (`dots_saveable`, `dots_with_no_batch_dims_saveable`, ...) keep matmul
  outputs, trading memory for less recompute.
  """
  if name == "none":
    return False
  if name == "full":
    return None
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or name.startswith("_"):
    names = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
    raise ValueError(f"remat_policy={name!r}: use none, full or one of {', '.join(names)}")
  if name.startswith(("save_", "offload_", "save_and_")):  # factories taking names, not policies
    raise ValueError(f"remat_policy={name!r} needs arguments; name a ready policy such as "
                     "dots_saveable or nothing_saveable")
  return policy


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Shape of a Llama / Qwen2 decoder. The family follows from `qkv_bias`: Qwen2 always has
  q/k/v biases and Llama never does, so the two are the same network otherwise."""

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
  dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators)
  param_dtype: str = "float32"  # master weights stay fp32 when compute is bf16
  scan_layers: bool = False  # one scanned layer: much faster compiles, params stacked [layers,...]
  remat_policy: str = "none"  # none | full | a jax.checkpoint_policies name (dots_saveable, ...)
  attention_impl: str = "auto"  # auto (cudnn on GPU when it applies, else xla) | xla | cudnn

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def family(self) -> str:
    return "qwen2" if self.qkv_bias else "llama"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.dim_per_head % 2:
      raise ValueError(f"head_dim={self.dim_per_head} must be even for rotary embeddings")
    remat_policy(self.remat_policy)  # fail at config time, not at trace time
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}: choose one of {ATTENTION_IMPLS}")

  @classmethod
  def from_hf(cls, config: Any, dtype: str = "float32") -> LLMConfig:
    """From a transformers config (a `PretrainedConfig` or its dict / config.json contents).

    Features this decoder does not implement are refused rather than silently dropped, since
    they change the outputs.
    """
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    model_type = c.get("model_type")
    if model_type not in _HF_ARCH:
      archs = c.get("architectures") or []
      raise ValueError(f"unsupported model_type {model_type!r} (architectures {archs}); this "
                       f"decoder covers {sorted(_HF_ARCH)} (Qwen2ForCausalLM, LlamaForCausalLM)")
    if c.get("use_sliding_window"):
      raise ValueError(
          "config enables sliding-window attention (use_sliding_window=true), which this decoder "
          "does not implement; use a checkpoint with full attention or set use_sliding_window "
          "to false if the model was trained without it")
    layer_types = c.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
      raise ValueError(f"config has non-full attention layers {sorted(set(layer_types))}; only "
                       "full attention is implemented")
    if c.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act={c['hidden_act']!r} is not supported; expected 'silu'")
    if model_type == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
      raise ValueError("Llama configs with attention_bias or mlp_bias are not supported")
    rope = dict(c.get("rope_parameters") or {})
    scaling = c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
      raise ValueError(f"rope scaling {rope_type!r} is not supported; only default RoPE")
    theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
    n_heads = c["num_attention_heads"]
    head_dim = c.get("head_dim")
    if head_dim == c["hidden_size"] // n_heads:
      head_dim = None
    return cls(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=n_heads, num_kv_heads=c.get("num_key_value_heads") or n_heads,
        head_dim=head_dim, rope_theta=float(theta), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),  # both classes default to untied
        qkv_bias=model_type == "qwen2",
        max_position=int(c.get("max_position_embeddings", 8192)), dtype=dtype)

  def to_hf(self) -> dict[str, Any]:
    """config.json contents that transformers loads as Qwen2ForCausalLM / LlamaForCausalLM."""
    c = {
        "architectures": [_HF_ARCH[self.family]], "model_type": self.family,
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
        "hidden_act": "silu", "max_position_embeddings": self.max_position,
        "rms_norm_eps": self.rms_eps, "tie_word_embeddings": self.tie_embeddings,
        "rope_theta": self.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
        "attention_dropout": 0.0, "use_cache": True,
    }
    if self.family == "llama":
      c.update(head_dim=self.dim_per_head, attention_bias=False, mlp_bias=False)
    else:
      if self.head_dim not in (None, self.hidden_size // self.num_heads):
        raise ValueError("Qwen2 configs in transformers cannot express head_dim != "
                         "hidden_size // num_heads")
      c.update(use_sliding_window=False, sliding_window=None,
               layer_types=["full_attention"] * self.num_layers)
    return c


@flax.struct.dataclass
class KVCache:
  """Keys / values of every layer in fixed-size slots, so decoding is shape-static.

  k[i], v[i]: [B,S,Nkv,H]; mask[B,S] marks filled slots that hold real (non-pad) tokens;
  index is the next slot to write.
  """

  k: tuple
  v: tuple
  mask: Array
  index: Array

  @classmethod
  def init(cls, cfg: LLMConfig, batch: int, size: int, dtype: Any = None) -> KVCache:
    dt = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, size, cfg.num_kv_heads, cfg.dim_per_head)
    zeros = tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers))
    return cls(k=zeros, v=tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)),
               mask=jnp.zeros((batch, size), bool), index=jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.mask.shape[1]


def _dense(features: int, axes: tuple[str, str], bias: bool, cfg: LLMConfig, name: str
           ) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.dtype(cfg.param_dtype), name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class RMSNorm(nn.Module):
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.param_dtype)
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


def attention_impl(cfg: LLMConfig, q: Array, decoding: bool) -> str:
  """The jax.nn.dot_product_attention backend: cuDNN's fused kernel only where it applies (GPU,
  16-bit inputs, head_dim a multiple of 8 up to 128, not one-token decoding), else XLA's."""
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  fits = (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128 and not decoding)
  return "cudnn" if fits else "xla"


class Attention(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, kv=None, index=None):
    """mask[B,L,S] over keys; with `kv` (cache k, v [B,S,Nkv,H]) the new keys are written at
    slot `index` and attention runs over the whole cache, returning (out, (k, v))."""
    cfg = self.cfg
    hd = cfg.dim_per_head
    b, t, _ = x.shape
    q = _dense(cfg.num_heads * hd, ("embed", "heads"), cfg.qkv_bias, cfg, "q_proj")(x)
    k = _dense(cfg.num_kv_heads * hd, ("embed", "kv"), cfg.qkv_bias, cfg, "k_proj")(x)
    v = _dense(cfg.num_kv_heads * hd, ("embed", "kv"), cfg.qkv_bias, cfg, "v_proj")(x)
    q = rope(q.reshape(b, t, cfg.num_heads, hd), positions, cfg.rope_theta)
    k = rope(k.reshape(b, t, cfg.num_kv_heads, hd), positions, cfg.rope_theta)
    v = v.reshape(b, t, cfg.num_kv_heads, hd)
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    if kv is not None:
      k = jax.lax.dynamic_update_slice_in_dim(kv[0], k.astype(kv[0].dtype), index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(kv[1], v.astype(kv[1].dtype), index, axis=1)
      kv = (k, v)
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    out = jax.nn.dot_product_attention(  # GQA handled natively
        q, k, v, mask=mask[:, None], implementation=attention_impl(cfg, q, kv is not None))
    out = nn.with_logical_constraint(out.reshape(b, t, cfg.num_heads * hd),
                                     ("act_batch", "act_len", "act_heads"))
    out = _dense(cfg.hidden_size, ("heads", "embed"), False, cfg, "o_proj")(out)
    return out if kv is None else (out, kv)


class MLP(nn.Module):
  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    gate = _dense(cfg.intermediate_size, ("embed", "mlp"), False, cfg, "gate_proj")(x)
    up = _dense(cfg.intermediate_size, ("embed", "mlp"), False, cfg, "up_proj")(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return _dense(cfg.hidden_size, ("mlp", "embed"), False, cfg, "down_proj")(h)


class DecoderLayer(nn.Module):
  """x[B,L,D] → (x, kv). The (carry, per-layer input) → (carry, per-layer output) signature is
  what `nn.scan` needs, so the same module runs unrolled or scanned."""

  cfg: LLMConfig

  @nn.compact
  def __call__(self, x: Array, kv, positions: Array, mask: Array, index=None):
    cfg, dt, pdt = self.cfg, jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    h = RMSNorm(cfg.rms_eps, dt, pdt, name="input_layernorm")(x)
    a = Attention(cfg, name="self_attn")(h, positions, mask, kv, index)
    if kv is not None:
      a, kv = a
    x = x + a
    h = RMSNorm(cfg.rms_eps, dt, pdt, name="post_attention_layernorm")(x)
    x = x + MLP(cfg, name="mlp")(h)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    return x, kv


def _layer_class(cfg: LLMConfig):
  """DecoderLayer, rematerialised per `cfg.remat_policy` and scanned when `cfg.scan_layers`."""
  cls, policy = DecoderLayer, remat_policy(cfg.remat_policy)
  if policy is not False:
    # scan already keeps XLA from merging recompute into the forward pass
    cls = nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    cls = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                  in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                  metadata_params={nn.PARTITION_NAME: "layers"})
  return cls


class DecoderLM(nn.Module):
  """embeds[B,L,D] → logits[B,L,V]; `embed` maps token ids to the same space.

  Layers are `layers_{i}` (the Hugging Face layout) or, with `cfg.scan_layers`, one `layers`
  whose params carry a leading [num_layers] axis; `to_layout` converts between the two.
  """

  cfg: LLMConfig

  def setup(self):
    cfg, dt, pdt = self.cfg, jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                    ("vocab", "embed")))
    layer = _layer_class(cfg)
    if cfg.scan_layers:
      self.layers = layer(cfg, name="layers")
    else:
      self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_eps, dt, pdt)
    if not cfg.tie_embeddings:
      self.lm_head = _dense(cfg.vocab_size, ("embed", "vocab"), False, cfg, "lm_head")

  def embed(self, tokens: Array) -> Array:
    return self.embed_tokens(tokens)

  def __call__(self, embeds: Array, positions: Array, attention_mask: Array,
               cache: KVCache | None = None, last_only: bool = False):
    """embeds[B,L,D], positions[B,L], attention_mask[B,L] (1 on real tokens) → logits[B,L,V].

    Attention is causal over real tokens. With a `cache`, the L new tokens go into slots
    cache.index.. and attend to every filled slot before them; returns (logits, cache).
    `last_only` computes logits of the final position only (what decoding needs).
    """
    t = embeds.shape[1]
    valid = attention_mask.astype(bool)
    if cache is None:
      causal = jnp.tril(jnp.ones((t, t), dtype=bool))
      mask = causal[None] & valid[:, None, :]  # [B,L,L]
    else:
      keys = jax.lax.dynamic_update_slice_in_dim(cache.mask, valid, cache.index, axis=1)
      q_slot = cache.index + jnp.arange(t)
      causal = jnp.arange(cache.size)[None, :] <= q_slot[:, None]  # [L,S]
      mask = causal[None] & keys[:, None, :]
    x = nn.with_logical_constraint(embeds, ("act_batch", "act_len", "act_embed"))
    index = None if cache is None else cache.index
    if self.cfg.scan_layers:
      kv = None if cache is None else (jnp.stack(cache.k), jnp.stack(cache.v))
      x, kv = self.layers(x, kv, positions, mask, index)
      new_k, new_v = (None, None) if kv is None else (tuple(kv[0]), tuple(kv[1]))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        x, kv = layer(x, None if cache is None else (cache.k[i], cache.v[i]), positions, mask,
                      index)
        if kv is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
    if last_only:
      x = x[:, -1:]
    x = self.norm(x)
    if self.cfg.tie_embeddings:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32),
                                        ("act_batch", "act_len", "act_vocab"))
    if cache is None:
      return logits
    return logits, KVCache(k=tuple(new_k), v=tuple(new_v), mask=keys, index=cache.index + t)


def stack_layers(params: Mapping[str, Any]) -> dict:
  """LLM params with `layers_{i}` subtrees → one `layers` subtree stacked on a leading axis."""
  n = sum(1 for k in params if k.startswith("layers_"))
  if not n:
    return dict(params)
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  stack = jnp.stack if any(isinstance(x, jax.Array) for x in jax.tree.leaves(params)) else np.stack
  out["layers"] = jax.tree.map(lambda *xs: stack(xs), *[params[f"layers_{i}"] for i in range(n)])
  return out


def unstack_layers(params: Mapping[str, Any]) -> dict:
  """Inverse of `stack_layers`: the per-layer layout that checkpoint conversion tables name."""
  if "layers" not in params:
    return dict(params)
  out = {k: v for k, v in params.items() if k != "layers"}
  n = jax.tree.leaves(params["layers"])[0].shape[0]
  for i in range(n):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out


def to_layout(params: Mapping[str, Any], cfg: LLMConfig) -> dict:
  """LLM params in either layout → the one `cfg.scan_layers` builds (a no-op when they match)."""
  return stack_layers(params) if cfg.scan_layers else unstack_layers(params)
