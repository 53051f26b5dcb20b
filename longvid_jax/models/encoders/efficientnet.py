"""EfficientNet-Lite0 as a frame encoder: frames[N,S,S,3] in [0,1] → feature grid[N,h,w,C].

The one pretrained image backbone that is available offline (asset `efficientnet_lite0`), so it
is the real-weights encoder for CPU demos. Lite differs from EfficientNet-B0 in ways that matter
for conversion: ReLU6 instead of swish, no squeeze-excitation, stem and head never rescaled.
Convolutions use TensorFlow "SAME" padding (asymmetric for stride 2), as the TensorFlow
original and the PyTorch port these weights come with do. BatchNorm runs in inference mode
from stored statistics, kept as plain params (`mean`, `var`) so the encoder needs no mutable
collection; they are frozen weights, not trained.

Which feature map comes out (`output`):
  "stride8"   40 ch, 28×28 at 224 px (block 4)
  "stride16" 112 ch, 14×14 at 224 px (block 10, default)
  "stride32" 320 ch,  7×7 at 224 px (block 15)
  "head"    1280 ch,  7×7 at 224 px (1×1 head conv, what the classifier pools)
The default is the stride-16 map: a 14×14 grid per frame is what a ViT-B/16 gives at the same
resolution, so the compressor sees a comparable token layout, and 112 channels keep the
per-frame cost small; "head" trades 4× fewer tokens for the most semantic, widest features.
Blocks after the chosen output are skipped at run time; their params still exist so one
converted checkpoint serves every choice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.encoders.base import ENCODERS, TokenGrid

Array = jax.Array

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int

  @property
  def hidden(self) -> int:
    return self.cin * self.expand

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.cin == self.cout


def lite0_blocks() -> tuple[BlockSpec, ...]:
  out = []
  for repeats, k, s, e, cin, cout in LITE0_STAGES:
    for r in range(repeats):
      out.append(BlockSpec(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
  return tuple(out)


# output name → index of the last block that runs (None: also the head conv)
OUTPUTS = {"stride8": 4, "stride16": 10, "stride32": 15, "head": None}
_OUTPUT_STRIDE = {"stride8": 8, "stride16": 16, "stride32": 32, "head": 32}


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
  image_size: int = 224
  output: str = "stride16"
  normalize: str = "imagenet"  # or "symmetric": (x - 0.5) / 0.5
  bn_eps: float = 1e-3
  dtype: str = "float32"  # compute dtype; params stay float32

  def __post_init__(self):
    if self.output not in OUTPUTS:
      raise ValueError(f"EfficientNetConfig: output={self.output!r}; choose one of "
                       f"{', '.join(OUTPUTS)}")
    if self.normalize not in ("imagenet", "symmetric"):
      raise ValueError(f"EfficientNetConfig: normalize={self.normalize!r}; choose 'imagenet' "
                       "or 'symmetric'")
    if self.image_size < 32:
      raise ValueError(f"EfficientNetConfig: image_size={self.image_size} is below 32 pixels")

  @classmethod
  def preset(cls, name: str, **overrides) -> "EfficientNetConfig":
    if name not in PRESETS:
      raise KeyError(f"unknown EfficientNet preset {name!r}; choose one of: "
                     f"{', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)

  @property
  def grid(self) -> tuple[int, int]:
    """SAME padding: every stride-s layer maps n → ceil(n / s)."""
    g = self.image_size
    for s in [2] + [b.stride for b in lite0_blocks()[:self.last_block + 1]]:
      g = math.ceil(g / s)
    return (g, g)

  @property
  def last_block(self) -> int:
    i = OUTPUTS[self.output]
    return len(lite0_blocks()) - 1 if i is None else i

  @property
  def width(self) -> int:
    return HEAD_CHANNELS if self.output == "head" else lite0_blocks()[self.last_block].cout

  @property
  def stride(self) -> int:
    return _OUTPUT_STRIDE[self.output]


PRESETS: dict[str, EfficientNetConfig] = {
    "lite0": EfficientNetConfig(),  # 14×14×112 per 224 px frame
    "lite0-head": EfficientNetConfig(output="head"),  # 7×7×1280
}


class FrozenBatchNorm(nn.Module):
  """y = (x - mean) / sqrt(var + eps) * scale + bias with stored statistics."""
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    p = lambda name, init: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(init, ("conv_out",)), (c,))
    scale, bias = p("scale", nn.initializers.ones), p("bias", nn.initializers.zeros)
    mean, var = p("mean", nn.initializers.zeros), p("var", nn.initializers.ones)
    mul = (scale * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return ((x - mean.astype(self.dtype)) * mul + bias.astype(self.dtype)).astype(self.dtype)


def _kernel_init(axes):
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(2.0, "fan_out", "normal"), axes)


def _conv(features: int, kernel: int, stride: int, name: str, dt: Any) -> nn.Conv:
  # A 4.6M-param CNN is cheapest replicated: its axes get their own names ("conv_in",
  # "conv_out"), which the default rules leave unsharded, so batch sharding never fights
  # channel sharding around the depthwise convolutions.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                 use_bias=False, dtype=dt, name=name,
                 kernel_init=_kernel_init((None, None, "conv_in", "conv_out")))


class DepthwiseConv(nn.Module):
  """k×k per-channel conv, TF "SAME" padding, as a sum of k² strided shifted products.

  Same params as `nn.Conv(feature_group_count=C)` (kernel[k,k,1,C]) and the same result, but
  XLA's CPU backend runs grouped convolutions 10-40× slower than this fused elementwise loop.
  """
  kernel: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, s = self.kernel, self.stride
    n, h, w, c = x.shape
    kern = self.param("kernel", _kernel_init((None, None, None, "conv_out")), (k, k, 1, c))
    kern = kern.astype(self.dtype)
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    x = jnp.pad(x.astype(self.dtype),
                ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        tap = x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :] * kern[i, j, 0]
        out = tap if out is None else out + tap
    return out


class MBConv(nn.Module):
  """Inverted bottleneck: 1×1 expand → k×k depthwise → 1×1 project (+ identity skip)."""
  spec: BlockSpec
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, dt = self.spec, self.dtype
    h = x
    if b.expand != 1:
      h = _conv(b.hidden, 1, 1, "expand_conv", dt)(h)
      h = nn.relu6(FrozenBatchNorm(self.eps, dt, name="bn0")(h))
    h = DepthwiseConv(b.kernel, b.stride, dt, name="depthwise_conv")(h)
    h = nn.relu6(FrozenBatchNorm(self.eps, dt, name="bn1")(h))
    h = _conv(b.cout, 1, 1, "project_conv", dt)(h)
    h = FrozenBatchNorm(self.eps, dt, name="bn2")(h)
    return h + x if b.residual else h


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0(TokenGrid, nn.Module):
  """frames[N,S,S,3] in [0,1] → tokens[N,h,w,C] ((h,w) = cfg.grid, C = cfg.width)."""

  cfg: EfficientNetConfig = EfficientNetConfig()

  @nn.compact
  def __call__(self, frames: Array) -> Array:
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    chex.assert_rank(frames, 4)
    s = cfg.image_size
    if tuple(frames.shape[1:]) != (s, s, 3):
      raise ValueError(f"EfficientNet-Lite0 expects frames[N,{s},{s},3] in [0,1], got "
                       f"{tuple(frames.shape)}; resize frames to the encoder's image_size ({s})")
    x = frames.astype(jnp.promote_types(dt, jnp.float32))
    if cfg.normalize == "imagenet":
      x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    else:
      x = (x - 0.5) / 0.5
    x = x.astype(dt)
    x = _conv(STEM_CHANNELS, 3, 2, "conv_stem", dt)(x)
    x = nn.relu6(FrozenBatchNorm(cfg.bn_eps, dt, name="bn0")(x))
    init = self.is_initializing()  # build every param whatever the output
    out = None
    for i, spec in enumerate(lite0_blocks()):
      if i > cfg.last_block and not init:
        break
      x = MBConv(spec, cfg.bn_eps, dt, name=f"blocks_{i}")(x)
      if i == cfg.last_block:
        out = x
    if cfg.output == "head" or init:
      x = _conv(HEAD_CHANNELS, 1, 1, "conv_head", dt)(x)
      x = nn.relu6(FrozenBatchNorm(cfg.bn_eps, dt, name="bn1")(x))
      if cfg.output == "head":
        out = x
    return nn.with_logical_constraint(out, ("act_batch", None, None, "act_embed"))
