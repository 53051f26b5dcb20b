"""Record → the frames a model sees: the one clip loader of training, the feature cache and
evaluation (`ask`, `eval`, held-out scoring), so a model is evaluated on what it was trained on.

Decode (video file or frame folder) → keep `[start, end)` → resample to `data.fps` → shot
evidence when the sampler needs it (`data/shots.py`, or the record's own `scores` .npy of
per-frame boundary probabilities), or the run's encoder descriptors of every candidate frame
for the samplers that choose by content (`data/descriptors.py`) → `data.sampler` with
`data.sampler_args` picks `data.num_frames` frames → resize to `data.image_size`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from longvid_jax.data import records, shots, video
from longvid_jax.data.descriptors import Describer
from longvid_jax.data.records import RecordError
from longvid_jax.sampling import samplers


@dataclasses.dataclass(frozen=True)
class Clip:
  """The sampled frames of one record: frames[T,S,S,3] uint8 with their frame indices, seconds
  from the clip start and which slots are real (False: padding of a video shorter than T)."""
  frames: np.ndarray
  indices: np.ndarray
  timestamps: np.ndarray
  valid: np.ndarray
  duration: float  # seconds of the [start, end) window
  scores: np.ndarray | None = None  # the whole video's boundary probabilities, when computed


def _boundary(reader, rec: records.Record, cfg, num_frames: int) -> np.ndarray:
  """single[N]: the whole video's boundary probabilities."""
  if rec.scores:
    single = np.asarray(np.load(rec.scores), np.float32).reshape(-1)
    if len(single) != num_frames:
      raise RecordError(f"{rec.scores} holds {len(single)} scores but {rec.video} has "
                        f"{num_frames} frames", "bad_scores")
    return single
  pred = shots.predict(rec.video, weights=cfg.detector_weights,
                       mode=cfg.detector_mode, reader=reader)
  if len(pred.single) != num_frames:  # the reader's count is what decodes; this is a reader bug
    raise RecordError(f"{rec.video}: {len(pred.single)} frames decoded but the frame table has "
                      f"{num_frames}; re-encode the file", "frame_count_mismatch")
  return pred.single


def reads_features(cfg) -> bool:
  """Whether `cfg.sampler` chooses frames by content (and so needs a `Describer`)."""
  return "features" in samplers.SAMPLERS.get(cfg.sampler).needs


def needs_describer(cfg, describe: Describer | None) -> None:
  """The content samplers choose with the run's encoder: refuse to guess without one."""
  if describe is None and reads_features(cfg):
    raise ValueError(f"sampler {cfg.sampler!r} picks frames by the run's vision features; pass "
                     "describe= (runs.Setup.describer(params) makes one from the model)")


def _span_max(x: np.ndarray, cand: np.ndarray) -> np.ndarray:
  """x's maximum over (previous candidate, candidate], so a cut between kept frames counts."""
  starts = np.concatenate([cand[:1], cand[:-1] + 1])
  return np.maximum.reduceat(x[:cand[-1] + 1], starts)


def select(cfg, timestamps: np.ndarray, start: float, end: float,
           single: np.ndarray | None = None,
           describe: Callable[[np.ndarray], np.ndarray] | None = None):
  """(frame indices, valid) that `cfg.sampler` keeps of the frames in [start, end) s after
  resampling to `cfg.fps`: the one selection rule of decoded and synthetic videos alike.
  `single` covers the whole video, as the detector gives it; `describe(candidates)` returns the
  descriptors[n,D] of the candidate frames."""
  ts = np.asarray(timestamps, np.float64)
  cand = np.nonzero((ts >= start) & (ts < end))[0]
  cand = cand[video.resample_indices(ts[cand], cfg.fps)]
  if not len(cand):
    raise RecordError(f"no frames in [{start}, {end}) s", "empty_clip")
  scores = None if single is None else _span_max(samplers.shot_start_scores(single), cand)
  k = int(cfg.num_frames)
  # a video within the budget keeps every frame: nothing to describe
  feats = None if describe is None or len(cand) <= k else describe(cand)
  sel = samplers.sample(cfg.sampler, k, num_frames=len(cand), scores=scores,
                        features=feats, **dict(cfg.sampler_args or {}))
  return cand[sel.indices], sel.valid


def load_clip(rec: records.Record, cfg, describe: Describer | None = None) -> Clip:
  """Decode and sample one record's video as `cfg` (a config's `data` block) says; `describe`
  gives the content samplers (fila, longvu) the run's encoder descriptors."""
  needs = samplers.SAMPLERS.get(cfg.sampler).needs
  needs_describer(cfg, describe)
  size = int(cfg.image_size)
  with video.open_video(rec.video, timeout=cfg.decode_timeout,
                        folder_fps=float(rec.meta.get("fps", cfg.folder_fps))) as r:
    ts = r.timestamps()
    duration = max(float(r.info.duration), float(ts[-1]) if len(ts) else 0.0)
    start = float(rec.start or 0.0)
    end = float(rec.end) if rec.end is not None else max(duration, float(ts[-1]) + 1e-6)
    if not np.any((ts >= start) & (ts < end)):
      raise RecordError(f"{rec.video}: no frames in [{start}, {end}) s", "empty_clip")
    single = _boundary(r, rec, cfg, len(ts)) if "scores" in needs else None
    features = None
    if "features" in needs:
      ident = video.video_identity(rec.video)
      features = lambda cand: describe(  # noqa: E731
          ident, cand, lambda idx: r.read(idx, size=(size, size)).frames)
    idx, valid = select(cfg, ts, start, end, single, features)
    got = r.read(idx, size=(size, size))
  return Clip(got.frames, idx, got.timestamps - start, valid, min(end, duration) - start,
              single)
