"""Decoder-only language model of the Llama / Qwen2 / Qwen3 family (RMSNorm, RoPE, GQA, SwiGLU).

Parameter names follow the Hugging Face layout (`layers_i/self_attn/q_proj`, ...) so checkpoint
conversion is a name map, not a rewrite. Weights and activations only name their logical axes;
the config's rules decide how they are sharded.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


HF_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
LAYER_TYPES = ("full_attention", "sliding_attention")

# rope_scaling keys each rope_type reads (transformers' names); required ones first
ROPE_KEYS = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "dynamic": (("factor",), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "truncate")),
    "llama3": (("factor", "original_max_position_embeddings", "low_freq_factor",
                "high_freq_factor"), ()),
}


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


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_rope_scaling(p: Mapping[str, Any], head_dim: int) -> None:
  """Accept only the rope parameters `rope_frequencies` reproduces exactly; anything else would
  change the outputs silently."""
  rope_type = p.get("rope_type", p.get("type", "default"))
  if rope_type not in ROPE_KEYS:
    raise ValueError(f"rope_scaling.rope_type={rope_type!r} is not supported; use one of "
                     f"{sorted(ROPE_KEYS)}")
  required, optional = ROPE_KEYS[rope_type]
  missing = [k for k in required if k not in p]
  if missing:
    raise ValueError(f"rope_scaling.{missing[0]} is missing; rope_type {rope_type!r} needs "
                     f"{', '.join(required)}")
  extra = sorted(set(p) - set(required) - set(optional)
                 - {"rope_type", "type", "partial_rotary_factor"})
  if extra:
    raise ValueError(f"rope_scaling.{extra[0]} is not supported with rope_type {rope_type!r}; "
                     "remove it or use a checkpoint without it")
  if p.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(f"rope_scaling.partial_rotary_factor={p['partial_rotary_factor']!r} is not "
                     "supported; only 1.0 (rotary on the whole head)")
  for k in ("factor", "low_freq_factor", "high_freq_factor"):
    if k in p and not (_is_number(p[k]) and p[k] > 0):
      raise ValueError(f"rope_scaling.{k}={p[k]!r} must be a positive number")
  for k in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
    if p.get(k) is not None and not (_is_number(p[k]) and p[k] >= 0):
      raise ValueError(f"rope_scaling.{k}={p[k]!r} must be a non-negative number or null")
  orig = p.get("original_max_position_embeddings")
  if orig is not None and (isinstance(orig, bool) or not isinstance(orig, int) or orig < 1):
    raise ValueError(f"rope_scaling.original_max_position_embeddings={orig!r} must be a positive "
                     "integer")
  if not isinstance(p.get("truncate", True), bool):
    raise ValueError(f"rope_scaling.truncate={p['truncate']!r} must be true or false")
  if rope_type == "llama3" and p["high_freq_factor"] <= p["low_freq_factor"]:
    raise ValueError(f"rope_scaling.high_freq_factor={p['high_freq_factor']!r} must exceed "
                     f"low_freq_factor={p['low_freq_factor']!r}")
  if rope_type == "dynamic" and head_dim <= 2:
    raise ValueError(f"rope_scaling.rope_type='dynamic' needs head_dim > 2, got {head_dim}")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Shape of a Llama / Qwen2 / Qwen3 decoder. The family follows from two switches: Qwen2
  always has q/k/v biases, Qwen3 never does but RMS-normalises each q/k head before RoPE, and
  Llama has neither; the networks are the same otherwise."""

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
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on every q and k head, before RoPE
  max_position: int = 8192
  dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators)
  param_dtype: str = "float32"  # master weights stay fp32 when compute is bf16
  scan_layers: bool = False  # one scanned layer: much faster compiles, params stacked [layers,...]
  remat_policy: str = "none"  # none | full | a jax.checkpoint_policies name (dots_saveable, ...)
  attention_impl: str = "auto"  # auto (cudnn on GPU when it applies, else xla) | xla | cudnn
  # transformers' rope_parameters minus rope_theta, as sorted (key, value) pairs (a dict is
  # accepted): () or rope_type default | linear | dynamic | yarn | llama3
  rope_scaling: Any = ()
  sliding_window: int | None = None  # sliding layers see keys < this many slots back (self incl.)
  layer_types: tuple[str, ...] = ()  # per layer full_attention | sliding_attention; () all full

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def family(self) -> str:
    if self.qk_norm:
      return "qwen3"
    return "qwen2" if self.qkv_bias else "llama"

  @property
  def rope_type(self) -> str:
    p = dict(self.rope_scaling)
    return p.get("rope_type", p.get("type", "default"))

  def layer_is_sliding(self, i: int) -> bool:
    return bool(self.layer_types) and self.layer_types[i] == "sliding_attention"

  def __post_init__(self):
    if hasattr(self.rope_scaling, "items"):  # hashable, so configs stay usable as jit keys
      object.__setattr__(self, "rope_scaling", tuple(sorted(dict(self.rope_scaling).items())))
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    _check_rope_scaling(dict(self.rope_scaling), self.dim_per_head)
    if self.layer_types:
      if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= set(LAYER_TYPES):
        raise ValueError(f"layer_types={list(self.layer_types)} must name one of {LAYER_TYPES} "
                         f"for each of the {self.num_layers} layers")
      w = self.sliding_window
      if "sliding_attention" in self.layer_types and (
          isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise ValueError(f"sliding_window={w!r} must be a positive integer when layer_types has "
                         "sliding_attention layers")
    if self.qk_norm and self.qkv_bias:
      raise ValueError("qk_norm with qkv_bias matches no supported family (Qwen3 has no q/k/v "
                       "biases); set qkv_bias false")
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
    if model_type not in HF_ARCHITECTURES:
      archs = c.get("architectures") or []
      raise ValueError(f"unsupported model_type {model_type!r} (architectures {archs}); this "
                       f"decoder covers {sorted(HF_ARCHITECTURES)} "
                       f"({', '.join(HF_ARCHITECTURES.values())})")
    n_layers = c["num_hidden_layers"]
    layer_types, window = c.get("layer_types"), None
    if layer_types is not None and (not isinstance(layer_types, list)
                                    or len(layer_types) != n_layers):
      raise ValueError(f"layer_types={layer_types!r} must list one type per layer "
                       f"({n_layers} layers)")
    if model_type in ("qwen2", "qwen3"):  # their configs' rules: the window counts if enabled
      window = c.get("sliding_window", 4096) if c.get("use_sliding_window") else None
      if layer_types is None:
        first = c.get("max_window_layers", 28)
        if isinstance(first, bool) or not isinstance(first, int):
          raise ValueError(f"max_window_layers={first!r} must be an integer")
        layer_types = ["sliding_attention" if window is not None and i >= first
                       else "full_attention" for i in range(n_layers)]
      if "sliding_attention" in layer_types and window is None:
        raise ValueError("layer_types has sliding_attention layers but use_sliding_window is "
                         "false (no window); set use_sliding_window and sliding_window")
    elif any(t != "full_attention" for t in layer_types or []):
      raise ValueError(f"layer_types={layer_types} is not supported for Llama; only "
                       "full_attention layers")
    if all(t == "full_attention" for t in layer_types or []):
      layer_types, window = (), None  # all full: the window is unused
    if c.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act={c['hidden_act']!r} is not supported; expected 'silu'")
    if model_type == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
      raise ValueError("Llama configs with attention_bias or mlp_bias are not supported")
    if model_type == "qwen3" and c.get("attention_bias"):
      raise ValueError("attention_bias=true is not supported for Qwen3; only bias-free "
                       "projections")
    # transformers reads rope_scaling first, then rope_parameters; rope_theta may sit outside
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
      raise ValueError(f"rope_parameters={rope!r} must be an object of rope settings")
    rope = dict(rope)
    theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
    if rope.get("rope_type", rope.get("type", "default")) in ("yarn", "llama3"):
      if "original_max_position_embeddings" in c:  # top-level wins, as in transformers
        rope["original_max_position_embeddings"] = c["original_max_position_embeddings"]
      rope.setdefault("original_max_position_embeddings",
                      c.get("max_position_embeddings", 8192))
    if set(rope) <= {"rope_type", "type"} and rope.get("rope_type",
                                                        rope.get("type", "default")) == "default":
      rope = {}
    n_heads = c["num_attention_heads"]
    head_dim = c.get("head_dim", 128) if model_type == "qwen3" else c.get("head_dim")
    if head_dim == c["hidden_size"] // n_heads:
      head_dim = None
    return cls(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=n_layers,
        num_heads=n_heads, num_kv_heads=c.get("num_key_value_heads") or n_heads,
        head_dim=head_dim, rope_theta=float(theta), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),  # both classes default to untied
        qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3",
        max_position=int(c.get("max_position_embeddings", 8192)), dtype=dtype,
        rope_scaling=rope, sliding_window=window, layer_types=tuple(layer_types))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields; `LLMConfig(**cfg.to_dict()) == cfg`."""
    d = dataclasses.asdict(self)
    d["rope_scaling"], d["layer_types"] = dict(self.rope_scaling), list(self.layer_types)
    return d

  def to_hf(self) -> dict[str, Any]:
    """config.json contents that transformers loads as Qwen2ForCausalLM / LlamaForCausalLM /
    Qwen3ForCausalLM."""
    c = {
        "architectures": [HF_ARCHITECTURES[self.family]], "model_type": self.family,
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
        "hidden_act": "silu", "max_position_embeddings": self.max_position,
        "rms_norm_eps": self.rms_eps, "tie_word_embeddings": self.tie_embeddings,
        "rope_theta": self.rope_theta,
        "rope_parameters": {**(dict(self.rope_scaling) or {"rope_type": "default"}),
                            "rope_theta": self.rope_theta},
        "attention_dropout": 0.0, "use_cache": True,
    }
    if self.rope_scaling:  # the name transformers 4.x reads
      c["rope_scaling"] = dict(self.rope_scaling)
    sliding = [i for i in range(self.num_layers) if self.layer_is_sliding(i)]
    if self.family == "llama":
      if sliding:
        raise ValueError("layer_types has sliding_attention layers, which LlamaForCausalLM "
                         "cannot express; use full_attention for the llama family")
      c.update(head_dim=self.dim_per_head, attention_bias=False, mlp_bias=False)
    else:
      c["head_dim"] = self.dim_per_head  # Qwen2 reads it too (and falls back to hidden/heads)
      if self.family == "qwen3":
        c["attention_bias"] = False
      if not sliding:
        c.update(use_sliding_window=False, sliding_window=None,
                 layer_types=["full_attention"] * self.num_layers)
      else:
        c.update(use_sliding_window=True, sliding_window=self.sliding_window,
                 layer_types=list(self.layer_types))
        if sliding == list(range(sliding[0], self.num_layers)):  # what older versions read
          c["max_window_layers"] = sliding[0]
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
  """Default rotary embedding in the half-split layout: x[B,L,N,H], positions[B,L]."""
  half = x.shape[-1] // 2
  return apply_rope(x, positions, 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half))


def apply_rope(x: Array, positions: Array, inv_freq: Array, scale: float = 1.0) -> Array:
  """Rotate x[B,L,N,H] by positions[B,L] × inv_freq[H/2]; `scale` multiplies cos and sin (YaRN's
  attention factor, applied where transformers applies it)."""
  half = x.shape[-1] // 2
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  if scale != 1.0:
    cos, sin = cos * scale, sin * scale
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@functools.lru_cache(maxsize=64)
def rope_frequencies(cfg: LLMConfig) -> tuple[np.ndarray, float]:
  """(inv_freq[H/2] float32, cos/sin scale) by transformers' formulas for cfg.rope_type.

  Computed in float64 and rounded once, so they sit within an ulp or two of transformers'
  float32 chain. Dynamic NTK depends on the sequence: this is its short-sequence set (the
  default); `rope_inv_freq` rescales it per call.
  """
  p, dim, theta = dict(cfg.rope_scaling), cfg.dim_per_head, cfg.rope_theta
  inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  scale = 1.0
  kind = cfg.rope_type
  if kind == "linear":
    inv = inv / p["factor"]
  elif kind == "llama3":
    factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old = p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)  # long waves: interpolate fully
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)  # in between: blend the two
    inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
  elif kind == "yarn":
    factor, old = p["factor"], p["original_max_position_embeddings"]

    def mscale(s, m=1.0):
      return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

    scale = p.get("attention_factor")
    if scale is None:
      if p.get("mscale") and p.get("mscale_all_dim"):
        scale = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
      else:
        scale = mscale(factor)

    def correction_dim(rotations):  # the dimension that turns `rotations` times over `old`
      return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True):
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
      high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    inv = (inv / factor) * ramp + inv * (1 - ramp)  # interpolate the slow dims, keep the fast
  return inv.astype(np.float32), float(scale)


def rope_inv_freq(cfg: LLMConfig, positions: Array) -> tuple[Array, float]:
  """The frequencies a call over `positions` uses. Dynamic NTK follows transformers: once the
  longest sequence in the call (max position + 1, over the whole batch) exceeds max_position,
  theta grows with it. A KV-cache step therefore rotates its new keys with the frequencies of
  its own length while cached keys keep theirs — what transformers' `generate` does too."""
  inv, scale = rope_frequencies(cfg)
  if cfg.rope_type != "dynamic":
    return jnp.asarray(inv), scale
  dim, factor, n = cfg.dim_per_head, dict(cfg.rope_scaling)["factor"], cfg.max_position
  seq = (jnp.max(positions) + 1).astype(jnp.float32)
  base = cfg.rope_theta * (factor * seq / n - (factor - 1)) ** (dim / (dim - 2))
  grown = 1.0 / base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  return jnp.where(seq > n, grown, jnp.asarray(inv)), scale


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
    q, k = q.reshape(b, t, cfg.num_heads, hd), k.reshape(b, t, cfg.num_kv_heads, hd)
    if cfg.qk_norm:
      dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
      q = RMSNorm(cfg.rms_eps, dt, pdt, name="q_norm")(q)
      k = RMSNorm(cfg.rms_eps, dt, pdt, name="k_norm")(k)
    inv_freq, scale = rope_inv_freq(cfg, positions)
    q = apply_rope(q, positions, inv_freq, scale)
    k = apply_rope(k, positions, inv_freq, scale)
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
  def __call__(self, x: Array, kv, positions: Array, mask, index=None, sliding=None):
    """`mask` is this layer's [B,L,S] mask, or the (full, windowed) pair with `sliding` (a
    scanned per-layer flag) choosing between them."""
    cfg, dt, pdt = self.cfg, jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    if sliding is not None:
      mask = jnp.where(sliding, mask[1], mask[0])
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
                  in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
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
               cache: KVCache | None = None, last_only: bool = False,
               logits_at: Array | None = None):
    """embeds[B,L,D], positions[B,L], attention_mask[B,L] (1 on real tokens) → logits[B,L,V].

    Attention is causal over real tokens. With a `cache`, the L new tokens go into slots
    cache.index.. and attend to every filled slot before them; returns (logits, cache).
    `last_only` computes logits of the final position only (what decoding needs);
    `logits_at[B,K]` those of K positions per row (what a loss on a few targets needs).
    """
    cfg, t = self.cfg, embeds.shape[1]
    valid = attention_mask.astype(bool)
    if cache is None:
      q_slot, k_slot, keys = jnp.arange(t), jnp.arange(t), valid
    else:
      keys = jax.lax.dynamic_update_slice_in_dim(cache.mask, valid, cache.index, axis=1)
      q_slot, k_slot = cache.index + jnp.arange(t), jnp.arange(cache.size)
    causal = k_slot[None, :] <= q_slot[:, None]  # [L,S]
    mask = causal[None] & keys[:, None, :]
    # Sliding layers see keys less than `sliding_window` slots back, as in transformers (slots,
    # not positions: the same for left-padded rows, whose real tokens are contiguous).
    flags = [cfg.layer_is_sliding(i) for i in range(cfg.num_layers)]
    window = None
    if any(flags):
      window = mask & (k_slot[None, :] > q_slot[:, None] - cfg.sliding_window)[None]
    x = nn.with_logical_constraint(embeds, ("act_batch", "act_len", "act_embed"))
    index = None if cache is None else cache.index
    if cfg.scan_layers:
      kv = None if cache is None else (jnp.stack(cache.k), jnp.stack(cache.v))
      if all(flags):
        args = (window, None)
      elif any(flags):
        args = ((mask, window), jnp.asarray(flags))
      else:
        args = (mask, None)
      x, kv = self.layers(x, kv, positions, args[0], index, args[1])
      new_k, new_v = (None, None) if kv is None else (tuple(kv[0]), tuple(kv[1]))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        x, kv = layer(x, None if cache is None else (cache.k[i], cache.v[i]), positions,
                      window if flags[i] else mask, index)
        if kv is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
    if last_only:
      x = x[:, -1:]
    elif logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
    x = self.norm(x)
    if cfg.tie_embeddings:
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
