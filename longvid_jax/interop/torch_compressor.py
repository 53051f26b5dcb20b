"""The exported compressor (OUT/compressor) in PyTorch: SVC encoder / decoder and MLP projector.

It sits between the exported vision tower and the exported LLM of a PyTorch deployment:
features[B,T,H,W,C] → embeds[B,N,D] for the LLM's `<video>` positions (N = t·h·w, time-major).
Every operation mirrors models/reducers/svc.py and models/projector.py: TF-style "SAME"
padding (asymmetric for even kernels), tanh GELU, LayerNorm eps 1e-6, edge padding of grids
the strides do not divide, and jax's conv_transpose for the decoder. Needs the `torch` extra.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

try:
  import torch
  import torch.nn.functional as F  # noqa: N812
  from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("longvid_jax.interop.torch_compressor needs PyTorch: "
                    "pip install 'longvid_jax[torch]'") from e

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _same(n: int, k: int, s: int) -> tuple[int, int]:
  """(before, after) padding of XLA's "SAME": output ceil(n/s), the extra pixel at the end."""
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def _transpose_pad(k: int, s: int) -> tuple[int, int]:
  """Padding jax.lax.conv_transpose uses for "SAME" (output n·s)."""
  total = k + s - 2
  before = k - 1 if s > k - 1 else math.ceil(total / 2)
  return before, total - before


def _pad(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
  """x[B,C,T,H,W] zero-padded by (before, after) per spatial axis."""
  flat = [p for pair in reversed(pads) for p in pair]
  return F.pad(x, flat) if any(flat) else x


def conv_same(x: torch.Tensor, conv: nn.Conv3d, stride: tuple[int, int, int]) -> torch.Tensor:
  pads = [_same(n, k, s) for n, k, s in zip(x.shape[2:], conv.weight.shape[2:], stride)]
  return F.conv3d(_pad(x, pads), conv.weight, conv.bias, stride)


def conv_transpose_same(x: torch.Tensor, conv: nn.Conv3d,
                        stride: tuple[int, int, int]) -> torch.Tensor:
  """jax.lax.conv_transpose(padding="SAME", transpose_kernel=False): correlate the kernel, as
  stored, with the input spread out by `stride` (zeros in between)."""
  b, c, *size = x.shape
  if any(s > 1 for s in stride):
    spread = x.new_zeros((b, c, *[(n - 1) * s + 1 for n, s in zip(size, stride)]))
    spread[:, :, ::stride[0], ::stride[1], ::stride[2]] = x
    x = spread
  pads = [_transpose_pad(k, s) for k, s in zip(conv.weight.shape[2:], stride)]
  return F.conv3d(_pad(x, pads), conv.weight, conv.bias)


def pad_to_multiple(x: torch.Tensor, strides) -> torch.Tensor:
  """x[B,T,H,W,C] edge-padded at the end of T/H/W up to multiples of `strides`."""
  pads = [-n % s for n, s in zip(x.shape[1:4], strides)]
  if not any(pads):
    return x
  y = F.pad(x.permute(0, 4, 1, 2, 3), (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
  return y.permute(0, 2, 3, 4, 1)


def avgpool3d(x: torch.Tensor, strides) -> torch.Tensor:
  """x[B,T,H,W,C] → window means over non-overlapping s_t×s_h×s_w blocks (after edge padding)."""
  x = pad_to_multiple(x, strides)
  y = F.avg_pool3d(x.permute(0, 4, 1, 2, 3).float(), tuple(strides), tuple(strides))
  return y.permute(0, 2, 3, 4, 1).to(x.dtype)


def upsample(x: torch.Tensor, strides) -> torch.Tensor:
  for axis, k in zip((1, 2, 3), strides):
    if k > 1:
      x = x.repeat_interleave(k, dim=axis)
  return x


def _gelu(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x, approximate="tanh")


class Block(nn.Module):
  """One SVC block. Encoder: spatial conv (stride s_h,s_w) → GELU → temporal conv (stride s_t)
  plus the window mean of the input; decoder: the transposed convs in reverse order plus the
  repeated input."""

  def __init__(self, width: int, bottleneck: int, stride, decoder: bool, eps: float):
    super().__init__()
    self.stride, self.decoder = tuple(stride), decoder
    st, sh, sw = self.stride
    self.norm = nn.LayerNorm(width, eps=eps)
    spatial_io, temporal_io = ((bottleneck, width), (width, bottleneck)) if decoder else (
        (width, bottleneck), (bottleneck, width))
    self.spatial = nn.Conv3d(*spatial_io, (1, max(3, sh), max(3, sw)))
    self.temporal = nn.Conv3d(*temporal_io, (max(3, st), 1, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # x[B,T,H,W,C]
    st, sh, sw = self.stride
    y = self.norm(x).permute(0, 4, 1, 2, 3)
    if self.decoder:
      y = _gelu(conv_transpose_same(y, self.temporal, (st, 1, 1)))
      y = conv_transpose_same(y, self.spatial, (1, sh, sw))
      return upsample(x, self.stride) + y.permute(0, 2, 3, 4, 1)
    y = _gelu(conv_same(y, self.spatial, (1, sh, sw)))
    y = conv_same(y, self.temporal, (st, 1, 1))
    return avgpool3d(x, self.stride) + y.permute(0, 2, 3, 4, 1)


class Cascade(nn.Module):
  def __init__(self, width: int, bottleneck: int, strides, decoder: bool, out_mult: int,
               eps: float):
    super().__init__()
    self.num_blocks = len(strides)
    for i, s in enumerate(strides):
      self.add_module(f"block_{i}", Block(width, bottleneck, s, decoder, eps))
    self.out_norm = nn.LayerNorm(width, eps=eps)
    self.out_proj = nn.Linear(width, out_mult * width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(self.num_blocks):
      x = getattr(self, f"block_{i}")(x)
    return self.out_proj(self.out_norm(x))


class SVC(nn.Module):
  """tokens[B,T,H,W,C] → latent[B,t,h,w,C] and back."""

  def __init__(self, width: int, strides, bottleneck: int, constraint: str, block_strides,
               eps: float = 1e-6):
    super().__init__()
    if constraint not in ("none", "vae", "residual"):
      raise ValueError(f"unknown SVC constraint {constraint!r}")
    self.strides, self.constraint = tuple(strides), constraint
    blocks = [tuple(s) for s in block_strides]
    self.encoder = Cascade(width, bottleneck, blocks, False, 2 if constraint == "vae" else 1, eps)
    self.decoder = Cascade(width, bottleneck, blocks[::-1], True, 1, eps)

  def encode(self, f: torch.Tensor) -> torch.Tensor:
    """The deterministic latent (the VAE's mean)."""
    fp = pad_to_multiple(f, self.strides)
    out = self.encoder(fp)
    if self.constraint == "residual":
      return out + avgpool3d(fp, self.strides)
    if self.constraint == "vae":
      return out[..., :out.shape[-1] // 2]
    return out

  def decode(self, h: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return self.decoder(h)[:, :grid[0], :grid[1], :grid[2]]


class Projector(nn.Module):
  def __init__(self, in_features: int, out_features: int, depth: int, norm: bool = False):
    super().__init__()
    self.depth = depth
    self.norm = nn.LayerNorm(in_features, eps=1e-5) if norm else None
    for i in range(depth):
      self.add_module(f"linear_{i}", nn.Linear(in_features if i == 0 else out_features,
                                               out_features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.norm is not None:
      x = self.norm(x)
    for i in range(self.depth):
      if i:
        x = _gelu(x)
      x = getattr(self, f"linear_{i}")(x)
    return x


class Compressor(nn.Module):
  """features[B,T,H,W,C] → embeds[B,N,D]: the SVC latent, flattened time-major, projected."""

  def __init__(self, config: dict):
    super().__init__()
    r, p = config["reducer"], config["projector"]
    if r["name"] != "svc" or config.get("layout") != "torch":
      raise ValueError(f"the PyTorch compressor runs the SVC only; this export holds reducer "
                       f"{r['name']!r}")
    a = r["args"]
    self.config = config
    self.reducer = SVC(r["width"], a["strides"], a["bottleneck"], a["constraint"],
                       r["block_strides"], r.get("layer_norm_eps", 1e-6))
    self.projector = Projector(p["in_features"], p["out_features"], p["depth"],
                               bool(p.get("norm", False)))

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike) -> "Compressor":
    """Load OUT/compressor; parameters keep the stored dtype (bf16 stays bf16)."""
    from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
    path = pathlib.Path(path)
    config = json.loads((path / "config.json").read_text())
    module = cls(config)
    state = load_file(str(path / "model.safetensors"))
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) == 1:
      module.to(dtypes.pop())
    module.load_state_dict(state, strict=True)
    return module.eval()

  def encode(self, features: torch.Tensor) -> torch.Tensor:
    return self.reducer.encode(features)

  def decode(self, latent: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return self.reducer.decode(latent, grid)

  def forward(self, features: torch.Tensor) -> torch.Tensor:
    h = self.encode(features)
    return self.projector(h.reshape(h.shape[0], -1, h.shape[-1]))
