"""Feature cache: encoder features (and shot scores) computed once and reused across epochs.

Frozen-encoder stages spend most of their time decoding and encoding the same frames again.
The cache stores per record `features[T,h,w,C]`, the sampled frame `indices[T]`, their
`timestamps[T]` (seconds from the clip start), the clip's `duration` and, when computed, the
video's boundary `scores[N]`, in safetensors shards with an
`index.json` that maps entry keys to shards.

A key hashes everything the features depend on: the video (path, size and mtime, or a content
hash), the clip bounds, the sampler with its options, k, the frame rate and image size, and an
encoder fingerprint (name, preset, options and a hash of the parameters). Any change makes a new
key, so a stale entry is never read; the index keeps the parts so a miss can say what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import threading
import uuid
from typing import Any, Callable, Iterable

import filelock
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from longvid_jax.data import clips
from longvid_jax.data import records as records_lib
from longvid_jax.data import video

log = logging.getLogger(__name__)

INDEX = "index.json"
ARRAYS = ("features", "indices", "timestamps", "duration", "scores")


# -- keys ---------------------------------------------------------------------------------------


def encoder_fingerprint(name: str, preset: str | None = None, args: dict | None = None,
                        params: Any = None) -> str:
  """Hash of the encoder's definition and weights: retraining or swapping it changes the key."""
  spec = {"name": name, "preset": preset, "args": dict(args or {})}
  h = hashlib.sha256(video.digest(spec).encode())
  if params is not None:
    import jax  # params are a pytree of arrays
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      a = np.asarray(leaf)
      h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return f"{name}-{h.hexdigest()[:16]}"


def sampling_spec(cfg) -> dict[str, Any]:
  """The data settings that decide which frames are encoded and how."""
  return {"sampler": cfg.sampler, "sampler_args": dict(cfg.sampler_args or {}),
          "k": int(cfg.num_frames), "fps": cfg.fps,
          "image_size": int(cfg.image_size)}


@dataclasses.dataclass(frozen=True)
class Key:
  """An entry's key and the parts it was hashed from."""
  video: str
  parts: dict[str, Any]

  @property
  def digest(self) -> str:
    return video.digest(self.parts)[:40]


def entry_key(record: records_lib.Record, cfg, encoder: str,
              content_hash: bool | None = None) -> Key:
  if content_hash is None:
    content_hash = bool(cfg.features_content_hash)
  parts = {"video": video.video_identity(record.video, content_hash),
           "clip": [record.start, record.end], "sampling": sampling_spec(cfg), "encoder": encoder}
  return Key(str(pathlib.Path(record.video).absolute()), parts)


# -- storage ------------------------------------------------------------------------------------


class FeatureCache:
  """Sharded on-disk store. `put` buffers entries; a shard is written when the buffer exceeds
  `shard_bytes` and on `flush`. Writers in several processes may share a root (the index is
  merged under a file lock)."""

  def __init__(self, root: str | os.PathLike, shard_bytes: int = 256 << 20):
    self.root = pathlib.Path(root)
    self.shard_bytes = shard_bytes
    self._pending: dict[str, dict[str, np.ndarray]] = {}
    self._pending_meta: dict[str, dict] = {}
    self._index: dict[str, dict] | None = None
    # open shards and their tensor names: opening parses a header of every entry's names, which
    # cost more than the step's share of the CPU when done per read (shards never change)
    self._shards: dict[str, tuple[Any, set[str]]] = {}
    self._lock = threading.Lock()

  # reading

  @property
  def index(self) -> dict[str, dict]:
    if self._index is None:
      f = self.root / INDEX
      self._index = json.loads(f.read_text())["entries"] if f.exists() else {}
    return self._index

  def reload(self) -> None:
    self._index = None

  def __len__(self) -> int:
    return len(self.index)

  def __contains__(self, key: Key) -> bool:
    """Written or waiting to be: a video's other records (a benchmark's five questions) are
    not encoded again before the shard is flushed."""
    return key.digest in self.index or key.digest in self._pending

  def get(self, key: Key) -> dict[str, np.ndarray] | None:
    if key.digest in self._pending:  # what `in` counts is what `get` returns
      return dict(self._pending[key.digest])
    entry = self.index.get(key.digest)
    if entry is None:
      return None
    f, names = self._shard(entry["shard"])
    return {a: f.get_tensor(f"{key.digest}/{a}") for a in ARRAYS
            if f"{key.digest}/{a}" in names}

  def _shard(self, name: str) -> tuple[Any, set[str]]:
    with self._lock:  # the input pipeline reads from several threads
      if name not in self._shards:
        f = safe_open(str(self.root / name), framework="np")
        self._shards[name] = (f, set(f.keys()))
      return self._shards[name]

  def explain_miss(self, key: Key) -> str:
    """Why `key` is absent: which parts differ from entries for the same video, if any."""
    same = [e for e in self.index.values() if e.get("video") == key.video]
    if not same:
      return f"no cache entry for {key.video} in {self.root}; run the feature precompute"
    diffs = sorted({p for e in same for p, v in e["parts"].items() if key.parts.get(p) != v})
    return (f"the cache entries for {key.video} are stale: {', '.join(diffs)} changed since they "
            "were computed; run the feature precompute again")

  # writing

  def put(self, key: Key, arrays: dict[str, np.ndarray]) -> None:
    unknown = set(arrays) - set(ARRAYS)
    if unknown or "features" not in arrays:
      raise ValueError(f"cache entries hold {ARRAYS} (features required), got {sorted(arrays)}")
    self._pending[key.digest] = {a: np.ascontiguousarray(v) for a, v in arrays.items()}
    self._pending_meta[key.digest] = {"video": key.video, "parts": key.parts}
    if sum(v.nbytes for e in self._pending.values() for v in e.values()) >= self.shard_bytes:
      self.flush()

  def flush(self) -> None:
    if not self._pending:
      return
    self.root.mkdir(parents=True, exist_ok=True)
    shard = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
    save_file({f"{k}/{a}": v for k, e in self._pending.items() for a, v in e.items()},
              str(self.root / shard))
    with filelock.FileLock(str(self.root / (INDEX + ".lock"))):
      f = self.root / INDEX
      entries = json.loads(f.read_text())["entries"] if f.exists() else {}
      for k, meta in self._pending_meta.items():
        entries[k] = {"shard": shard, **meta}
      tmp = f.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
      tmp.write_text(json.dumps({"version": 1, "entries": entries}))
      os.replace(tmp, f)
    self._index = entries
    self._pending.clear()
    self._pending_meta.clear()

  def __enter__(self) -> "FeatureCache":
    return self

  def __exit__(self, *exc) -> None:
    self.flush()


# -- precompute ---------------------------------------------------------------------------------


def precompute(recs: Iterable[records_lib.Record], cfg, encode: Callable[[np.ndarray], Any],
               encoder: str, root: str | os.PathLike, shard_bytes: int = 256 << 20,
               strict: bool = False, describe=None) -> dict[str, Any]:
  """Decodes, samples and encodes each record not yet cached; returns counts.

  `encode(frames[T,S,S,3] float32 in [0,1]) -> features[T,h,w,C]`, e.g. a jitted
  `model.apply(..., method="features")` on one video. Sampling is the pipeline's, so the cached
  frames are exactly the ones training would read (`describe` serves content samplers).
  """
  stats: dict[str, Any] = {"written": 0, "cached": 0, "skipped": {}}
  with FeatureCache(root, shard_bytes) as cache:
    for rec in recs:
      try:
        key = entry_key(rec, cfg, encoder)
        if key in cache:
          stats["cached"] += 1
          continue
        clip = clips.load_clip(rec, cfg, describe)
      except Exception as e:  # noqa: BLE001 - one bad video must not stop a long precompute
        if strict:
          raise
        reason = video.error_reason(e)
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
        log.warning("skipping %s (%s): %s", rec.id, reason, e)
        continue
      feats = np.asarray(encode(clip.frames.astype(np.float32) / 255.0))
      arrays = {"features": feats, "indices": clip.indices, "timestamps": clip.timestamps,
                "duration": np.asarray([clip.duration], np.float64)}
      if clip.scores is not None:
        arrays["scores"] = clip.scores
      cache.put(key, arrays)
      stats["written"] += 1
  return stats
