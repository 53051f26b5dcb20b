"""Parameter-free pooling reducers: the paper's 3D average-pooling baseline and LLaVA-OneVision's
per-frame bilinear pooling.

Padding policy (shared with the SVC, which imports `avgpool3d`): a grid the strides do not divide
is padded at the END of each axis by repeating the last frame / row / column up to the next
multiple, so SigLIP-384's 27×27 grid with stride 4 becomes 28×28 → 7×7. Edge replication keeps the
last window an average of real tokens (zero padding would shrink its norm).
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from longvid_jax.models.reducers.base import REDUCERS, Reduced, TextAgnostic

NEWLINE_MODES = ("none", "row", "frame")


def _check_strides(strides: Sequence[int], what: str) -> tuple[int, int, int]:
  try:
    s = tuple(int(v) for v in strides)
  except TypeError:
    raise ValueError(f"{what} must be three positive integers (s_t, s_h, s_w), "
                     f"got {strides!r}") from None
  if len(s) != 3 or any(v < 1 for v in s) or any(v != float(o) for v, o in zip(s, strides)):
    raise ValueError(f"{what} must be three positive integers (s_t, s_h, s_w), got {strides!r}")
  return s


def pad_to_multiple(x: jax.Array, strides: Sequence[int]) -> jax.Array:
  """x[B,T,H,W,C] with its T/H/W axes edge-padded at the end to multiples of `strides`."""
  pad = [(0, 0)] + [(0, -n % s) for n, s in zip(x.shape[1:4], strides)] + [(0, 0)]
  return jnp.pad(x, pad, mode="edge") if any(p[1] for p in pad) else x


def avgpool3d(x: jax.Array, strides: Sequence[int]) -> jax.Array:
  """x[B,T,H,W,C] → [B,⌈T/s_t⌉,⌈H/s_h⌉,⌈W/s_w⌉,C]: non-overlapping means after edge padding."""
  chex.assert_rank(x, 5)
  st, sh, sw = _check_strides(strides, "avgpool3d strides")
  x = pad_to_multiple(x, (st, sh, sw))
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // st, st, h // sh, sh, w // sw, sw, c)
  # Accumulate in float32 so bf16 inputs do not lose the low bits of the mean.
  return jnp.mean(x, axis=(2, 4, 6), dtype=jnp.float32).astype(x.dtype)


def pooled_grid(t: int, h: int, w: int, strides: Sequence[int]) -> tuple[int, int, int]:
  st, sh, sw = strides
  return math.ceil(t / st), math.ceil(h / sh), math.ceil(w / sw)


def bilinear2d(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """x[B,T,H,W,C] → [B,T,h,w,C], each frame resized bilinearly with half-pixel centres.

  Matches torch `interpolate(mode="bilinear", align_corners=False, antialias=False)` (what
  LLaVA-OneVision calls): no antialiasing, so downsampling by 2 reads the two nearest rows/columns.
  """
  chex.assert_rank(x, 5)
  b, t, _, _, c = x.shape
  out = jax.image.resize(x.astype(jnp.float32), (b, t, size[0], size[1], c), method="bilinear",
                         antialias=False)
  return out.astype(x.dtype)


def _flat(x: jax.Array) -> Reduced:
  b, c = x.shape[0], x.shape[-1]
  flat = nn.with_logical_constraint(x.reshape(b, -1, c), ("act_batch", "act_len", "act_embed"))
  return Reduced(flat, jnp.ones(flat.shape[:2], bool), {})


@REDUCERS.register("avgpool3d")
class AvgPool3D(TextAgnostic, nn.Module):
  """The paper's baseline: mean over non-overlapping s_t×s_h×s_w windows (edge-padded)."""
  strides: tuple[int, int, int] = (4, 4, 4)

  def __post_init__(self):
    _check_strides(self.strides, "avgpool3d strides")
    super().__post_init__()

  def num_tokens(self, t: int, h: int, w: int) -> int:
    return math.prod(pooled_grid(t, h, w, self.strides))

  def reduce(self, tokens: jax.Array) -> Reduced:  # parameter-free
    return _flat(avgpool3d(tokens, self.strides))


@REDUCERS.register("bilinear2d")
class Bilinear2D(TextAgnostic, nn.Module):
  """LLaVA-OneVision's video pooling: each frame resized to ⌈H/s⌉×⌈W/s⌉ (27×27 → 14×14).

  `newline`: "row" appends a learned vector after every row of every frame (LLaVA-OV's "grid"
  layout, telling the LLM where rows end), "frame" one after every frame, "none" nothing. LLaVA-OV
  learns it in the LLM width after the projector; here it lives in the visual width C and goes
  through the projector with the other tokens.
  """
  stride: int = 2
  newline: str = "none"

  def __post_init__(self):
    if int(self.stride) != self.stride or self.stride < 1:
      raise ValueError(f"bilinear2d stride must be a positive integer, got {self.stride!r}")
    if self.newline not in NEWLINE_MODES:
      raise ValueError(f"bilinear2d newline {self.newline!r}: choose one of {NEWLINE_MODES}")
    super().__post_init__()

  def out_grid(self, h: int, w: int) -> tuple[int, int]:
    return math.ceil(h / self.stride), math.ceil(w / self.stride)

  def num_tokens(self, t: int, h: int, w: int) -> int:
    oh, ow = self.out_grid(h, w)
    extra = {"none": 0, "row": oh, "frame": 1}[self.newline]
    return t * (oh * ow + extra)

  @nn.compact
  def reduce(self, tokens: jax.Array) -> Reduced:
    b, t, h, w, c = tokens.shape
    x = bilinear2d(tokens, self.out_grid(h, w))  # [B,T,h,w,C]
    if self.newline != "none":
      nl = self.param("newline_embedding", nn.with_logical_partitioning(
          nn.initializers.normal(1.0 / math.sqrt(c)), ("embed",)), (c,)).astype(x.dtype)
      if self.newline == "row":
        x = jnp.concatenate([x, jnp.broadcast_to(nl, (*x.shape[:3], 1, c))], axis=3)
      else:
        x = jnp.concatenate(
            [x.reshape(b, t, -1, c), jnp.broadcast_to(nl, (b, t, 1, c))], axis=2)
    return _flat(x)
