"""Frame samplers: which k frames of a T-frame video the vision encoder sees.

Every sampler is a frozen dataclass of its options, registered in `SAMPLERS`, and called as
`sampler(k, num_frames=T, scores=..., features=...) -> Selection`. `needs` says which inputs it
reads: `scores[T]` (shot-start evidence from the boundary detector) or `features[T,D]` (per-frame
descriptors, e.g. mean-pooled encoder tokens).

Shared contract (tested for every sampler): `Selection.indices[k]` is int32, sorted ascending, in
[0, T), unique among valid entries, and exactly min(k, T) entries are valid. When T < k a sampler
returns every frame once and pads the tail with the last frame index, marked `valid=False`, so
callers can gather without branching and mask the padded slots (a fixed k keeps downstream shapes
static).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax.registry import Registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Selection:
  indices: np.ndarray  # int32[k], ascending
  valid: np.ndarray  # bool[k]; False only for padding when the video has fewer than k frames


SAMPLERS: Registry = Registry("sampler")


# -- shared pieces ------------------------------------------------------------------------------


def all_frames(num_frames: int, k: int) -> tuple[Array, Array]:
  """T <= k: every frame, padded with the last index and masked."""
  pos = jnp.arange(k, dtype=jnp.int32)
  return jnp.minimum(pos, max(num_frames - 1, 0)), pos < num_frames


def uniform_indices(num_frames: int, k: int) -> Array:
  """Centres of k equal segments: floor((q + 1/2) T / k), distinct when k <= T."""
  q = jnp.arange(k, dtype=jnp.int32)
  return ((2 * q + 1) * num_frames) // (2 * k)


def nms_peaks(scores: Array, window: int) -> Array:
  """bool[T]: local maxima within ±window frames.

  A frame survives if it is strictly above every frame in the `window` before it and at least as
  high as every frame in the `window` after it, so of a tie or a plateau only the first frame
  survives.
  """
  if window < 0:
    raise ValueError(f"NMS window must be >= 0, got {window}")
  s = jnp.asarray(scores, jnp.float32)
  if window == 0:
    return jnp.ones(s.shape, bool)
  t = s.shape[0]
  padded = jnp.pad(s, (window, window), constant_values=-jnp.inf)
  wmax = jax.lax.reduce_window(padded, -jnp.inf, jax.lax.max, (window,), (1,), "VALID")
  left = wmax[:t]  # max of s[i-w : i]
  right = wmax[window + 1:window + 1 + t]  # max of s[i+1 : i+w+1]
  return (s > left) & (s >= right)


def _check(k: int, num_frames: int) -> None:
  if k < 1:
    raise ValueError(f"frame budget k must be >= 1, got {k}")
  if num_frames < 1:
    raise ValueError(f"the video has no frames (num_frames={num_frames})")


def _scores(scores, num_frames: int, who: str) -> Array:
  if scores is None:
    raise ValueError(f"sampler {who!r} needs per-frame scores (e.g. from ShotDetector)")
  s = jnp.asarray(scores, jnp.float32)
  chex.assert_rank(s, 1)
  if s.shape[0] != num_frames:
    raise ValueError(f"scores has {s.shape[0]} entries but the video has {num_frames} frames")
  return s


def _frame_features(k: int, num_frames: int, features, who: str) -> np.ndarray | None:
  """Checked [T,D] features for a feature-driven sampler; None when all T frames fit in k."""
  _check(k, num_frames)
  if features is None:
    raise ValueError(f"sampler {who!r} needs per-frame features[T,D]")
  f = np.asarray(features, np.float32)
  if f.ndim == 3:  # tokens[T,N,D] → mean-pooled frame features[T,D]
    f = f.mean(axis=1)
  if f.ndim != 2 or f.shape[0] != num_frames:
    raise ValueError(f"features must be [T,D] or [T,N,D] with T={num_frames}, got {f.shape}")
  return None if k >= num_frames else f


def _finish(idx, valid) -> Selection:
  return Selection(np.asarray(idx, np.int32), np.asarray(valid, bool))


def _fill_uniform(chosen: np.ndarray, num_frames: int, need: int) -> np.ndarray:
  """`need` more frames spread evenly over the frames not yet chosen."""
  free = np.setdiff1d(np.arange(num_frames), chosen)
  if need <= 0 or not len(free):
    return chosen
  q = np.arange(min(need, len(free)))
  return np.union1d(chosen, free[((2 * q + 1) * len(free)) // (2 * len(q))])


def _cosine(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- adaptive video sampler ---------------------------------------------------------------------


def shot_start_scores(single: np.ndarray) -> np.ndarray:
  """TransNetV2 marks the last frame of a shot; the next frame starts the new one."""
  single = np.asarray(single, np.float32)
  return np.concatenate([np.zeros(1, np.float32), single[:-1]])


def avs_select(scores: Array, k: int, window: int = 5, threshold: float = 0.5
               ) -> tuple[Array, Array]:
  """Adaptive selection: jittable with static k and window.

  Peaks = NMS survivors scoring >= threshold (shot starts). With at least k peaks, the k
  strongest, in time order. With fewer, every peak plus a fill: the budget is shared between the
  shots in proportion to their length (D'Hondt, never more slots than frames), a shot whose start
  is a peak keeps it and spreads its other slots evenly after it; the span before the first peak
  is uniformly sampled. No peaks at all therefore gives exactly the `uniform` sampler.
  """
  s = jnp.asarray(scores, jnp.float32)
  t = s.shape[0]
  if k >= t:
    return all_frames(t, k)
  frame = jnp.arange(t)
  peak = nms_peaks(s, window) & (s >= threshold)
  n_peaks = peak.sum()

  # Enough peaks: the k highest (top_k breaks ties towards the earlier frame).
  _, top = jax.lax.top_k(jnp.where(peak, s, -jnp.inf), k)
  by_score = jnp.sort(top).astype(jnp.int32)

  # Fewer peaks than k (so at most k shots): allocate slots to shots.
  starts = jnp.nonzero(peak | (frame == 0), size=k + 1, fill_value=t)[0]
  used = starts < t
  anchored = peak[jnp.minimum(starts, t - 1)] & used
  ends = jnp.concatenate([starts[1:], jnp.array([t])])
  length = jnp.where(used, jnp.minimum(ends, t) - starts, 0)
  q = jnp.arange(k)
  quota = length[:, None] / (q[None, :] + 1.0)
  quota = jnp.where(q[None, :] < length[:, None], quota, -jnp.inf)
  quota = jnp.where(anchored[:, None] & (q[None, :] == 0), jnp.inf, quota)
  _, won = jax.lax.top_k(quota.reshape(-1), k)
  count = jnp.bincount(won // k, length=k + 1)
  last = jnp.cumsum(count)
  shot = jnp.searchsorted(last, q, side="right")
  rank = q - (last - count)[shot]
  n, start, span = count[shot], starts[shot], length[shot]
  filled = jnp.where(anchored[shot], start + (rank * span) // n,
                     start + ((2 * rank + 1) * span) // (2 * n)).astype(jnp.int32)

  idx = jnp.where(n_peaks >= k, by_score, filled)
  return idx, jnp.ones((k,), bool)


@SAMPLERS.register("avs")
@dataclasses.dataclass(frozen=True)
class AdaptiveSampler:
  """Shot-aware sampling from boundary scores (see `avs_select`)."""
  window: int = 5  # NMS half-window in frames
  threshold: float = 0.5  # minimum score of a shot start
  needs: ClassVar[tuple[str, ...]] = ("scores",)

  def __call__(self, k: int, *, num_frames: int, scores=None, features=None) -> Selection:
    _check(k, num_frames)
    s = _scores(scores, num_frames, "avs")
    return _finish(*_avs_jit(s, k, self.window, self.threshold))


_avs_jit = jax.jit(avs_select, static_argnums=(1, 2))


# -- uniform and multi-rate uniform -------------------------------------------------------------


@SAMPLERS.register("uniform")
@dataclasses.dataclass(frozen=True)
class UniformSampler:
  needs: ClassVar[tuple[str, ...]] = ()

  def __call__(self, k: int, *, num_frames: int, scores=None, features=None) -> Selection:
    _check(k, num_frames)
    if k >= num_frames:
      return _finish(*all_frames(num_frames, k))
    return _finish(uniform_indices(num_frames, k), np.ones(k, bool))


def multirate_indices(num_frames: int, k: int, rate: int, stride: int = 1) -> Array:
  """k = clips × rate frames: `rate` frames `stride` apart around the centre of each of k/rate
  equal segments (dense locally, sparse globally). Needs k < num_frames."""
  clips = k // rate
  c = jnp.arange(clips)
  lo, hi = (c * num_frames) // clips, ((c + 1) * num_frames) // clips
  step = jnp.clip(jnp.minimum(stride, (hi - lo) // rate), 1, None)  # segments hold >= rate frames
  centre = ((2 * c + 1) * num_frames) // (2 * clips)
  first = jnp.clip(centre - (rate // 2) * step, lo, hi - 1 - (rate - 1) * step)
  idx = first[:, None] + jnp.arange(rate)[None, :] * step[:, None]
  return idx.reshape(-1).astype(jnp.int32)


@SAMPLERS.register("multirate")
@dataclasses.dataclass(frozen=True)
class MultiRateSampler:
  """E.g. k=96, rate=3: 32 segments, 3 consecutive frames from the middle of each."""
  rate: int = 3
  stride: int = 1
  needs: ClassVar[tuple[str, ...]] = ()

  def __call__(self, k: int, *, num_frames: int, scores=None, features=None) -> Selection:
    _check(k, num_frames)
    if self.rate < 1 or self.stride < 1:
      raise ValueError(f"multirate needs rate >= 1 and stride >= 1, got {self.rate}, {self.stride}")
    if k % self.rate:
      raise ValueError(f"multirate: k={k} must be a multiple of rate={self.rate}")
    if k >= num_frames:
      return _finish(*all_frames(num_frames, k))
    return _finish(multirate_indices(num_frames, k, self.rate, self.stride), np.ones(k, bool))


# -- feature-based: FiLA-Video scenes, LongVU pruning -------------------------------------------


def kmeans(x: np.ndarray, m: int, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Cosine K-means on x[T,D] → (labels[T], centroids[m,D]).

  Initialised with m frames evenly spaced in time, which starts every cluster on a distinct part
  of the video and makes the result deterministic.
  """
  x = _cosine(x)
  cent = x[np.asarray(uniform_indices(len(x), m))]
  labels = np.zeros(len(x), np.int64)
  for _ in range(iters):
    labels = np.argmax(x @ cent.T, axis=1)
    new = np.stack([x[labels == j].mean(0) if np.any(labels == j) else cent[j] for j in range(m)])
    new = _cosine(new)
    if np.allclose(new, cent):
      break
    cent = new
  return labels, cent


class _FeatureSampler:
  """Samplers driven by per-frame features: a video of at most k frames keeps them all, a
  longer one keeps the k frames `select(features[T,D], k)` names."""
  needs: ClassVar[tuple[str, ...]] = ("features",)
  name: ClassVar[str]

  def __call__(self, k: int, *, num_frames: int, scores=None, features=None) -> Selection:
    f = _frame_features(k, num_frames, features, self.name)
    if f is None:
      return _finish(*all_frames(num_frames, k))
    return _finish(self.select(f, k), np.ones(k, bool))


@SAMPLERS.register("fila")
@dataclasses.dataclass(frozen=True)
class FiLASampler(_FeatureSampler):
  """FiLA-Video-style scene selection on mean-pooled frame features.

  K-means splits the frames into k // (1 + r) scenes; each scene contributes its key frame (the
  member nearest the centroid) and the r members from the key frame's history (earlier frames of
  the same scene) most similar to it, topped up from later members when the history is short.
  Budget left over by small scenes is filled uniformly from the frames not chosen.
  """
  r: int = 2  # supplements per scene
  iters: int = 20
  name: ClassVar[str] = "fila"

  def __post_init__(self):
    if self.r < 0:
      raise ValueError(f"fila: r must be >= 0, got {self.r}")

  def select(self, f: np.ndarray, k: int) -> np.ndarray:
    r = min(self.r, k - 1)
    m = max(1, k // (1 + r))
    labels, cent = kmeans(f, m, self.iters)
    x = _cosine(f)
    chosen = []
    for j in range(m):
      members = np.nonzero(labels == j)[0]
      if not len(members):
        continue
      key = members[np.argmax(x[members] @ cent[j])]
      sim = x[members] @ x[key]
      history = [i for i in members[np.argsort(-sim, kind="stable")] if i < key]
      later = [i for i in members[np.argsort(-sim, kind="stable")] if i > key]
      chosen += [key] + (history + later)[:r]
    chosen = np.unique(np.asarray(chosen, np.int64))[:k]
    return _fill_uniform(chosen, len(f), k - len(chosen))


@SAMPLERS.register("longvu")
@dataclasses.dataclass(frozen=True)
class LongVUSampler(_FeatureSampler):
  """LongVU-style temporal pruning: in non-overlapping windows of `window` frames, drop frames
  whose mean cosine similarity to the other frames of the window exceeds `threshold`.

  The survivors are then fitted to the budget: more than k are thinned uniformly; fewer than k are
  topped up with the dropped frames that were least redundant (lowest mean similarity).
  """
  window: int = 16
  threshold: float = 0.83
  name: ClassVar[str] = "longvu"

  def __post_init__(self):
    if self.window < 1:
      raise ValueError(f"longvu: window must be >= 1, got {self.window}")

  def redundancy(self, features: np.ndarray) -> np.ndarray:
    """[T] mean cosine similarity of each frame to the others in its window (-1 if alone)."""
    x = _cosine(np.asarray(features, np.float32))
    out = np.empty(len(x), np.float32)
    for a in range(0, len(x), self.window):
      w = x[a:a + self.window]
      if len(w) == 1:
        out[a] = -1.0
        continue
      sim = w @ w.T
      out[a:a + len(w)] = (sim.sum(1) - np.diag(sim)) / (len(w) - 1)
    return out

  def select(self, f: np.ndarray, k: int) -> np.ndarray:
    red = self.redundancy(f)
    kept = np.nonzero(red <= self.threshold)[0]
    if len(kept) >= k:
      chosen = kept[np.asarray(uniform_indices(len(kept), k))]
    else:
      dropped = np.nonzero(red > self.threshold)[0]
      extra = dropped[np.argsort(red[dropped], kind="stable")[:k - len(kept)]]
      chosen = np.sort(np.concatenate([kept, extra]))
    return chosen


def sample(method: str, k: int, *, num_frames: int, scores=None, features=None,
           **options) -> Selection:
  """One-call entry: `sample("avs", 32, num_frames=T, scores=s)`."""
  return SAMPLERS.get(method)(**options)(k, num_frames=num_frames, scores=scores,
                                         features=features)
