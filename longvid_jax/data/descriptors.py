"""Per-frame descriptors for the samplers that pick frames by content (FiLA, LongVU).

Both methods select frames by the similarity of their image features, so the descriptor of a
frame is the run's own vision encoder's tokens mean-pooled over space: the features the model
itself sees, not a proxy. Every candidate frame of a video (every frame left after `data.fps`)
is encoded, which is the expensive part, so each video's descriptors are kept on disk under the
user's cache dir keyed by what they depend on: the video, which frames, the image size and the
encoder's fingerprint (definition and weights). A second epoch, `ask` and `eval` read them back.

`runs.Setup.describer(params)` makes one from a model; the training stages use the encoder as
the stage starts, so a stage's data stay a function of (seed, step) even when it trains the
encoder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
from typing import Any, Callable

import numpy as np

from longvid_jax import assets
from longvid_jax.data import video

log = logging.getLogger(__name__)

Frames = Callable[[np.ndarray], np.ndarray]  # frame indices[n] -> uint8[n,S,S,3] at image_size


def cache_root() -> pathlib.Path:
  return assets.cache_dir() / "descriptors"


@dataclasses.dataclass(frozen=True)
class Describer:
  """`embed(frames[batch,S,S,3] float32 in [0,1]) -> [batch,D]` with a fixed batch, so one
  program serves every video; shorter tails are padded."""
  embed: Callable[[np.ndarray], Any]
  fingerprint: str  # features.encoder_fingerprint of the encoder embed runs
  image_size: int
  batch: int = 16
  cache: bool = True

  def __post_init__(self):
    if self.batch < 1:
      raise ValueError(f"describer batch must be >= 1, got {self.batch}")

  def of_frames(self, frames: np.ndarray) -> np.ndarray:
    """uint8[n,S,S,3] → float32[n,D]."""
    out = []
    for a in range(0, len(frames), self.batch):
      x = frames[a:a + self.batch].astype(np.float32) / 255.0
      n = len(x)
      if n < self.batch:
        x = np.concatenate([x, np.zeros((self.batch - n, *x.shape[1:]), np.float32)])
      out.append(np.asarray(self.embed(x), np.float32)[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def _file(self, identity: Any, indices: np.ndarray) -> pathlib.Path:
    key = {"video": identity, "frames": video.digest(np.asarray(indices).tolist()),
           "size": int(self.image_size), "encoder": self.fingerprint}
    return cache_root() / f"{video.digest(key)[:32]}.npy"

  def __call__(self, identity: Any, indices: np.ndarray, frames: Frames) -> np.ndarray:
    """Descriptors[len(indices), D] of one video's frames `indices`; `identity` names the video
    (e.g. `video.video_identity(path)`) and `frames` decodes or renders the given indices."""
    indices = np.asarray(indices, np.int64)
    file = self._file(identity, indices) if self.cache else None
    if file is not None and file.is_file():
      try:
        got = np.load(file)
        if got.shape[0] == len(indices):
          return got
      except (OSError, ValueError) as e:
        log.warning("descriptor cache %s is unreadable (%s); encoding again", file, e)
    out = np.concatenate([self.of_frames(frames(indices[a:a + self.batch]))
                          for a in range(0, len(indices), self.batch)])
    if file is not None:
      file.parent.mkdir(parents=True, exist_ok=True)
      tmp = file.with_name(f"{file.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
      np.save(tmp, out)
      os.replace(tmp, file)  # readers never see half a file
    return out
