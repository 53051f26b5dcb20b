"""Spatiotemporal Video Compressor (SVC): the paper's autoencoder over the vision token grid.

The encoder C is a cascade of residual blocks; each block is a 2D spatial conv (stride s_h, s_w)
into a narrow bottleneck, then a 1D temporal conv (stride s_t) back to the full width, added to an
average-pooled shortcut. The total strides (s_t, s_h, s_w) are spread over the blocks, two-fold
per block where possible, so 4×4×4 is two blocks of 2×2×2 and 1×8×8 is three blocks of 1×2×2.
The decoder D mirrors the cascade with transposed convs and repeat-upsampled shortcuts.

Latent constraints (`constraint`):
  residual  h = C(f) + avgpool3d(f): the latent can only add detail to the pooled baseline, which
            makes it easy for the projector/LLM to read and makes a random C start near pooling;
  vae       Gaussian latent with a KL term (reparameterised during reconstruction training);
  none      a plain autoencoder, h = C(f).

Padding policy: a grid the strides do not divide is padded at the end of each axis by repeating
the last frame / row / column up to the next multiple (SigLIP-384's 27×27 with stride 4 becomes
28×28 → 7×7 latent). Reconstructions are cropped back and the loss counts only real positions.
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.reducers.base import REDUCERS, Reduced
from longvid_jax.models.reducers.pooling import avgpool3d, pad_to_multiple

CONSTRAINTS = ("none", "vae", "residual")


def block_strides(strides: Sequence[int]) -> list[tuple[int, int, int]]:
  """Spread total strides over blocks: each axis's prime factors, largest first, one per block."""
  def factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
      while n % p == 0:
        out.append(p)
        n //= p
      p += 1
    return out
  per_axis = [sorted(factors(s), reverse=True) for s in strides]
  n = max(1, max(len(f) for f in per_axis))
  return [tuple(f[i] if i < len(f) else 1 for f in per_axis) for i in range(n)]


def _conv_init(axes):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def _upsample(x: jax.Array, s: tuple[int, int, int]) -> jax.Array:
  for axis, k in zip((1, 2, 3), s):
    if k > 1:
      x = jnp.repeat(x, k, axis=axis)
  return x


class EncoderBlock(nn.Module):
  stride: tuple[int, int, int]
  bottleneck: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # x[B,T,H,W,C]
    st, sh, sw = self.stride
    c = x.shape[-1]
    y = nn.LayerNorm(name="norm")(x)
    y = nn.Conv(self.bottleneck, (1, max(3, sh), max(3, sw)), strides=(1, sh, sw),
                padding="SAME", name="spatial", kernel_init=_conv_init(
                    (None, None, None, "embed", "mlp")))(y)
    y = nn.gelu(y)
    y = nn.Conv(c, (max(3, st), 1, 1), strides=(st, 1, 1), padding="SAME", name="temporal",
                kernel_init=_conv_init((None, None, None, "mlp", "embed")))(y)
    return avgpool3d(x, self.stride) + y


class DecoderBlock(nn.Module):
  stride: tuple[int, int, int]
  bottleneck: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    st, sh, sw = self.stride
    c = x.shape[-1]
    y = nn.LayerNorm(name="norm")(x)
    y = nn.ConvTranspose(self.bottleneck, (max(3, st), 1, 1), strides=(st, 1, 1),
                         padding="SAME", name="temporal", kernel_init=_conv_init(
                             (None, None, None, "embed", "mlp")))(y)
    y = nn.gelu(y)
    y = nn.ConvTranspose(c, (1, max(3, sh), max(3, sw)), strides=(1, sh, sw), padding="SAME",
                         name="spatial", kernel_init=_conv_init(
                             (None, None, None, "mlp", "embed")))(y)
    return _upsample(x, self.stride) + y


class Cascade(nn.Module):
  """Blocks, then LayerNorm and a dense projection to `out_mult` × the input width."""
  strides: tuple[tuple[int, int, int], ...]
  bottleneck: int
  block: type[nn.Module]
  out_mult: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    for i, s in enumerate(self.strides):
      x = self.block(s, self.bottleneck, name=f"block_{i}")(x)
      x = nn.with_logical_constraint(x, ("act_batch", None, None, None, "act_embed"))
    x = nn.LayerNorm(name="out_norm")(x)
    return nn.Dense(self.out_mult * c, name="out_proj", kernel_init=_conv_init(
        ("embed", "embed_out")))(x)


@REDUCERS.register("svc")
class SVC(nn.Module):
  """tokens[B,T,H,W,C] → latent[B,t,h,w,C], flattened to Reduced.tokens[B,t·h·w,C]."""
  strides: tuple[int, int, int] = (4, 4, 4)
  bottleneck: int = 256
  constraint: str = "residual"
  kl_weight: float = 1e-4

  def setup(self):
    if self.constraint not in CONSTRAINTS:
      raise ValueError(f"svc constraint {self.constraint!r}: choose one of {CONSTRAINTS}")
    if len(self.strides) != 3 or any(int(s) < 1 for s in self.strides):
      raise ValueError(f"svc strides must be three positive integers (s_t, s_h, s_w), "
                       f"got {self.strides}")
    if self.bottleneck < 1:
      raise ValueError(f"svc bottleneck must be positive, got {self.bottleneck}")
    blocks = tuple(block_strides(self.strides))
    self.encoder = Cascade(blocks, self.bottleneck, EncoderBlock,
                           out_mult=2 if self.constraint == "vae" else 1)
    self.decoder = Cascade(tuple(reversed(blocks)), self.bottleneck, DecoderBlock)

  def num_tokens(self, t: int, h: int, w: int) -> int:
    st, sh, sw = self.strides
    return math.ceil(t / st) * math.ceil(h / sh) * math.ceil(w / sw)

  def encode(self, f: jax.Array, deterministic: bool = True) -> tuple[jax.Array, dict]:
    """f[B,T,H,W,C] → (h[B,t,h,w,C], losses). Samples the VAE latent unless deterministic."""
    chex.assert_rank(f, 5)
    fp = pad_to_multiple(f, self.strides)
    out = self.encoder(fp)
    if self.constraint == "residual":
      return out + avgpool3d(fp, self.strides), {}
    if self.constraint == "none":
      return out, {}
    mean, logvar = jnp.split(out, 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
    if deterministic:
      return mean, {"kl": kl}
    eps = jax.random.normal(self.make_rng("noise"), mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps, {"kl": kl}

  def decode(self, h: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """h[B,t,h,w,C] → f̂[B,T,H,W,C], cropped to the original grid (T, H, W)."""
    return self.decoder(h)[:, :grid[0], :grid[1], :grid[2]]

  def __call__(self, tokens: jax.Array, query: jax.Array | None = None,
               deterministic: bool = True, query_mask: jax.Array | None = None) -> Reduced:
    del query, query_mask  # the SVC compresses without text guidance
    h, losses = self.encode(tokens, deterministic)
    if self.is_initializing():  # create the decoder's params too
      self.decode(h, tokens.shape[1:4])
    b, c = h.shape[0], h.shape[-1]
    flat = h.reshape(b, -1, c)
    return Reduced(flat, jnp.ones(flat.shape[:2], bool), losses)

  def reconstruction_loss(self, f: jax.Array, deterministic: bool = False):
    """L1 between f and D(C(f)) on real positions, plus kl_weight·KL for the VAE."""
    h, losses = self.encode(f, deterministic)
    recon = self.decode(h, f.shape[1:4])
    l1 = jnp.mean(jnp.abs(recon.astype(jnp.float32) - f.astype(jnp.float32)))
    loss = l1 + self.kl_weight * losses.get("kl", 0.0)
    return loss, {"l1": l1, **losses}
