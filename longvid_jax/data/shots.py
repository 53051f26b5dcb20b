"""Shot-boundary evidence of a video, computed once: the one place a video meets the detector.

Training, the feature cache, `ask`/`eval`, the oracle and `longvid shots` all read scores here.
Each process keeps one TransNetV2 per (weights, mode); each video's per-frame probabilities and
embeddings are kept on disk under the user's cache dir, keyed by the video's identity (path, size,
mtime) and the detector, so a second epoch, an evaluation or a rerun never runs it again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
from typing import Any

import numpy as np

from longvid_jax import assets
from longvid_jax.data import video
from longvid_jax.interop import transnetv2 as weights_lib
from longvid_jax.sampling import transnetv2
from longvid_jax.sampling.transnetv2 import INPUT_HW, ShotDetector, ShotPredictions

log = logging.getLogger(__name__)

CHUNK = 500  # frames decoded per step: memory stays flat in the video's length (two chunks)

_DETECTORS: dict[Any, ShotDetector] = {}
_LOCK = threading.Lock()


def detector(weights: str | os.PathLike | None = None, mode: str = "exact",
             batch_windows: int = 4) -> ShotDetector:
  """One detector per process and setting; `weights` None means the released ones."""
  key = (None if weights is None else str(weights), mode, int(batch_windows))
  with _LOCK:
    if key not in _DETECTORS:
      _DETECTORS[key] = ShotDetector(weights_lib.load_params(weights), batch_windows, mode)
    return _DETECTORS[key]


def cache_root() -> pathlib.Path:
  return assets.cache_dir() / "shots"


def _cache_file(path: str | os.PathLike, weights, mode: str) -> pathlib.Path:
  key = {"video": video.video_identity(path), "weights": None if weights is None else
         video.video_identity(weights), "mode": mode, "model": transnetv2.__name__}
  return cache_root() / f"{video.digest(key)[:32]}.npz"


def _score_reader(reader, det: ShotDetector, progress: bool, name: str) -> ShotPredictions:
  stamps: list[np.ndarray] = []

  def chunks():  # the next chunk decodes while the detector scores this one
    for c in video.prefetch(reader.iter_chunks(CHUNK, size=(INPUT_HW[1], INPUT_HW[0]))):
      stamps.append(c.timestamps)
      yield c.frames

  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=reader.info.num_frames, unit="frame", desc=f"shots {name}")
  try:
    pred = det.predict_chunks(chunks(), None if bar is None else (lambda k: bar.update(k - bar.n)))
  finally:
    if bar is not None:
      bar.close()
  return dataclasses.replace(pred, timestamps=np.concatenate(stamps) if stamps else np.zeros(0))


def predict(path: str | os.PathLike, weights: str | os.PathLike | None = None,
            mode: str = "exact", reader=None, progress: bool = False, cache: bool = True,
            batch_windows: int = 4) -> ShotPredictions:
  """Per-frame boundary probabilities (and embeddings) of the whole video at `path`.

  `reader`: an open `video.open_video(path)` to decode from (else one is opened here)."""
  file = _cache_file(path, weights, mode) if cache else None
  if file is not None and file.is_file():
    try:
      with np.load(file) as z:
        return ShotPredictions(z["single"], z["many"], z["embeddings"], z["timestamps"])
    except (OSError, ValueError, KeyError) as e:
      log.warning("shot cache %s is unreadable (%s); scoring %s again", file, e, path)
  det = detector(weights, mode, batch_windows)
  name = pathlib.Path(path).name
  if reader is None:
    with video.open_video(path) as r:
      pred = _score_reader(r, det, progress, name)
  else:
    pred = _score_reader(reader, det, progress, name)
  if file is not None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
    np.savez(tmp, single=pred.single, many=pred.many, embeddings=pred.embeddings,
             timestamps=pred.timestamps)
    os.replace(tmp, file)  # readers never see half a file
  return pred
