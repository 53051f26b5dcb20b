"""SigLIP vision tower: frames[N,S,S,3] in [0,1] → patch tokens[N,g,g,C].

Same computation as Hugging Face `SiglipVisionModel` (patch convolution, learned position
embeddings, pre-LN encoder layers with a tanh-GELU MLP, post-layernorm, optional attention-pooling
head), with parameter names that mirror its tensor names so checkpoint conversion is a name map
(longvid_jax/interop/vision.py). Video LLMs usually take a hidden layer rather than the last one
(LLaVA uses the second to last), so `select_layer` picks which one comes out; layers after it are
skipped at run time but their parameters are kept, so one checkpoint serves every choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.encoders.base import ENCODERS, TokenGrid

Array = jax.Array

# HF activation names → (jax.nn.gelu approximate?) ; SigLIP checkpoints use the tanh form.
_ACTIVATIONS = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True, "gelu": False}


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Vision tower shape; field meanings follow HF `SiglipVisionConfig`.

  select_layer: None → last layer after post_layernorm (HF `last_hidden_state`); an int k →
    HF `hidden_states[k]` (no post_layernorm): 0 is the patch embeddings, -1 the last layer's
    raw output, -2 (LLaVA's choice) the one before it.
  use_head: keep the attention-pooling head's params (only `pool` uses it).
  """
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  patch_size: int = 14
  image_size: int = 384
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu_pytorch_tanh"
  use_head: bool = False
  select_layer: int | None = None
  dtype: str = "float32"  # compute dtype; params stay float32

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"SiglipConfig: hidden_size={self.hidden_size} must be a multiple of "
                       f"num_heads={self.num_heads}")
    if self.patch_size <= 0 or self.image_size < self.patch_size:
      raise ValueError(f"SiglipConfig: image_size={self.image_size} must be at least "
                       f"patch_size={self.patch_size} > 0")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"SiglipConfig: hidden_act={self.hidden_act!r} is not supported; choose "
                       f"one of {sorted(_ACTIVATIONS)}")
    if self.select_layer is not None and not (
        -(self.num_layers + 1) <= self.select_layer <= self.num_layers):
      raise ValueError(f"SiglipConfig: select_layer={self.select_layer} is outside "
                       f"[{-(self.num_layers + 1)}, {self.num_layers}] for "
                       f"num_layers={self.num_layers}")

  # --- shapes the data pipeline and the compressor plan with -----------------------------------
  @property
  def grid(self) -> tuple[int, int]:
    """(h, w) of the token grid; the convolution drops a remainder (384 // 14 = 27)."""
    g = self.image_size // self.patch_size
    return (g, g)

  @property
  def width(self) -> int:
    return self.hidden_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def hidden_index(self) -> int | None:
    """Index into HF `hidden_states` (0..num_layers) of the output, None for the last layer."""
    if self.select_layer is None:
      return None
    return self.select_layer % (self.num_layers + 1)

  # --- Hugging Face configs ---------------------------------------------------------------------
  @classmethod
  def from_hf(cls, hf: Any, **overrides) -> "SiglipConfig":
    """From a `SiglipVisionConfig` / `SiglipConfig` (object or its dict; `interop.files` reads
    config.json). `overrides` set our own fields (select_layer, use_head, dtype)."""
    if not isinstance(hf, Mapping):
      hf = hf.to_dict()
    hf = dict(hf)
    if "vision_config" in hf:  # full SiglipModel config
      hf = dict(hf["vision_config"] or {})
    mt = hf.get("model_type", "siglip_vision_model")
    if mt not in ("siglip_vision_model", "siglip"):
      raise ValueError(f"expected a SigLIP vision config, got model_type={mt!r}")

    def square(key: str, default: int) -> int:
      v = hf.get(key, default)
      if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
          raise ValueError(f"SigLIP {key}={v}: only square sizes are supported")
        v = v[0]
      return int(v)

    kw = dict(hidden_size=hf.get("hidden_size", 768),
              intermediate_size=hf.get("intermediate_size", 3072),
              num_layers=hf.get("num_hidden_layers", 12),
              num_heads=hf.get("num_attention_heads", 12),
              patch_size=square("patch_size", 16), image_size=square("image_size", 224),
              num_channels=hf.get("num_channels", 3),
              layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
              hidden_act=hf.get("hidden_act", "gelu_pytorch_tanh"),
              use_head=bool(hf.get("vision_use_head", True)))
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """config.json contents that `SiglipVisionModel.from_pretrained` reads."""
    return {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_channels": self.num_channels,
        "image_size": self.image_size,
        "patch_size": self.patch_size,
        "hidden_act": self.hidden_act,
        "layer_norm_eps": self.layer_norm_eps,
        "attention_dropout": 0.0,
        "vision_use_head": self.use_head,
        "dtype": "float32",
    }

  @classmethod
  def preset(cls, name: str, **overrides) -> "SiglipConfig":
    if name not in PRESETS:
      raise KeyError(f"unknown SigLIP preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, SiglipConfig] = {
    # small enough to train on a laptop CPU; 64 px frames → 8×8 tokens of width 128
    "tiny": SiglipConfig(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4,
                         patch_size=8, image_size=64),
    "base-patch16-224": SiglipConfig(hidden_size=768, intermediate_size=3072, num_layers=12,
                                     num_heads=12, patch_size=16, image_size=224),
    # google/siglip-so400m-patch14-384, the tower used by LLaVA-OneVision-style video LLMs
    "so400m-patch14-384": SiglipConfig(),
}


# --- layers ---------------------------------------------------------------------------------------

def _dense(features: int, axes: tuple[str | None, str | None], dt: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dt, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def _layernorm(cfg: SiglipConfig, name: str) -> nn.LayerNorm:
  # two-pass variance, as torch computes it
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), name=name,
                      use_fast_variance=False,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _act(cfg: SiglipConfig, x: Array) -> Array:
  return jax.nn.gelu(x, approximate=_ACTIVATIONS[cfg.hidden_act])


class SiglipEmbeddings(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, pixels: Array) -> Array:
    """pixels[N,S,S,3] (normalised) → x[N,P,D] with P = g*g in row-major patch order."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    p = cfg.patch_size
    x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=dt,
                name="patch_embedding",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(pixels)
    n, gh, gw, d = x.shape
    pos = nn.Embed(cfg.num_patches, d, dtype=dt, name="position_embedding",
                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(d ** -0.5),
                                                               (None, "embed")))
    x = x.reshape(n, gh * gw, d) + pos(jnp.arange(gh * gw))[None]
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class SiglipAttention(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    b, n, d = x.shape
    split = lambda t: t.reshape(b, n, cfg.num_heads, cfg.head_dim)  # noqa: E731
    q = split(_dense(d, ("embed", "heads"), dt, "q_proj")(x))
    k = split(_dense(d, ("embed", "heads"), dt, "k_proj")(x))
    v = split(_dense(d, ("embed", "heads"), dt, "v_proj")(x))
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    out = jax.nn.dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(head_dim)
    return _dense(d, ("heads", "embed"), dt, "out_proj")(out.reshape(b, n, d))


class SiglipMLP(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    h = _act(cfg, _dense(cfg.intermediate_size, ("embed", "mlp"), dt, "fc1")(x))
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
    return _dense(cfg.hidden_size, ("mlp", "embed"), dt, "fc2")(h)


class SiglipEncoderLayer(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x + SiglipAttention(self.cfg, name="self_attn")(_layernorm(self.cfg, "layer_norm1")(x))
    x = x + SiglipMLP(self.cfg, name="mlp")(_layernorm(self.cfg, "layer_norm2")(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class SiglipPoolingHead(nn.Module):
  """Attention pooling with one learned probe (torch.nn.MultiheadAttention's packed in_proj)."""
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x[N,P,D] → pooled[N,D]."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    n, _, d = x.shape
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (None, None, "embed")), (1, 1, d))
    w = self.param("in_proj_kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "heads")), (d, 3 * d)).astype(dt)
    bias = self.param("in_proj_bias", nn.with_logical_partitioning(
        nn.initializers.zeros, ("heads",)), (3 * d,)).astype(dt)
    q = jnp.broadcast_to(probe.astype(dt), (n, 1, d)) @ w[:, :d] + bias[:d]
    kv = x.astype(dt) @ w[:, d:] + bias[d:]
    k, v = kv[..., :d], kv[..., d:]
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], cfg.num_heads, cfg.head_dim)  # noqa: E731
    out = jax.nn.dot_product_attention(heads(q), heads(k), heads(v)).reshape(n, 1, d)
    out = _dense(d, ("heads", "embed"), dt, "out_proj")(out)
    out = out + SiglipMLP(cfg, name="mlp")(_layernorm(cfg, "layernorm")(out))
    return out[:, 0]


@ENCODERS.register("siglip")
class SiglipVisionEncoder(TokenGrid, nn.Module):
  """frames[N,S,S,3] in [0,1] → tokens[N,g,g,C] (S = cfg.image_size, (g,g) = cfg.grid)."""

  cfg: SiglipConfig

  def setup(self):
    cfg = self.cfg
    self.embeddings = SiglipEmbeddings(cfg)
    self.layers = [SiglipEncoderLayer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.post_layernorm = _layernorm(cfg, "post_layernorm")
    if cfg.use_head:
      self.head = SiglipPoolingHead(cfg)

  def _pixels(self, frames: Array) -> Array:
    chex.assert_rank(frames, 4)
    s = self.cfg.image_size
    if tuple(frames.shape[1:]) != (s, s, self.cfg.num_channels):
      raise ValueError(f"SigLIP expects frames[N,{s},{s},{self.cfg.num_channels}] in [0,1], got "
                       f"{tuple(frames.shape)}; resize frames to the encoder's image_size ({s})")
    return (frames.astype(jnp.dtype(self.cfg.dtype)) - 0.5) / 0.5

  def encode(self, pixels: Array, select_layer: int | None | str = "config") -> Array:
    """Normalised pixels[N,S,S,3] (HF pixel_values, channels last) → x[N,P,D] at the chosen
    layer (default: the config's `select_layer`)."""
    cfg = self.cfg
    if select_layer == "config":
      index = cfg.hidden_index
    else:
      index = dataclasses.replace(cfg, select_layer=select_layer).hidden_index
    init = self.is_initializing()  # create every param even when the output comes earlier
    x = self.embeddings(pixels)
    out = x if index == 0 else None
    for i, layer in enumerate(self.layers):
      if not init and index is not None and i >= index:
        break
      x = layer(x)
      if index == i + 1:
        out = x
    if index is None or init:
      last = self.post_layernorm(x)
      if cfg.use_head and init:
        self.head(last)
      out = last if index is None else out
    return out

  def __call__(self, frames: Array) -> Array:
    tokens = self.encode(self._pixels(frames))
    n = tokens.shape[0]
    tokens = tokens.reshape(n, *self.cfg.grid, self.cfg.hidden_size)
    return nn.with_logical_constraint(tokens, ("act_batch", None, None, "act_embed"))

  def pool(self, frames: Array) -> Array:
    """frames[N,S,S,3] → pooled[N,C] from the attention-pooling head (HF `pooler_output`)."""
    if not self.cfg.use_head:
      raise ValueError("this SigLIP tower was built without its pooling head; set use_head=True")
    return self.head(self.encode(self._pixels(frames), select_layer=None))
