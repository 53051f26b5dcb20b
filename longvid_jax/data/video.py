"""Video decoding with PyAV: metadata, frame-accurate random access and bounded-memory streaming.

Frame index `i` always means the i-th frame in presentation order, the same frame a full
sequential decode yields at position `i`. Random access finds the frame's presentation timestamp
in a table built by demuxing packets (cheap: no decoding), seeks to the keyframe before it and
decodes forward, so reads are exact even for streams with B-frames or variable frame rate.

Frames come out as uint8 RGB `frames[N,H,W,3]` with their indices and timestamps (seconds from the
start of the stream). `size=(W, H)` resizes inside the decoder (swscale), so full-resolution
frames never reach NumPy.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
from typing import Iterator, Sequence

import av
import numpy as np

Size = tuple[int, int]  # (width, height), the order ffmpeg and PyAV use


class VideoError(ValueError):
  """A file that cannot be read as a video; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  path: str
  num_frames: int
  fps: float  # average frame rate of the video stream
  duration: float  # seconds, num_frames / fps when the container does not say
  width: int
  height: int
  codec: str


@dataclasses.dataclass(frozen=True)
class Frames:
  """Decoded frames with where they came from: frames[N,H,W,3] uint8, indices[N], timestamps[N]."""
  frames: np.ndarray
  indices: np.ndarray  # int64 frame index in presentation order
  timestamps: np.ndarray  # float64 seconds from the start of the stream

  def __len__(self) -> int:
    return len(self.indices)


class VideoReader:
  """One open video file. Use as a context manager, or call `close()`."""

  def __init__(self, path: str | os.PathLike, threads: bool = True):
    self.path = str(path)
    if not os.path.exists(self.path):
      raise FileNotFoundError(f"video file not found: {self.path}")
    if os.path.isdir(self.path):
      raise VideoError(f"{self.path} is a directory, not a video file")
    self._threads = threads
    self._used = False  # whether the container has been read from (then rewinding reopens it)
    self._open()
    self._time_base = self._stream.time_base or fractions.Fraction(1, 1)
    self._pts: np.ndarray | None = None  # presentation timestamps, sorted
    self._key_pts: np.ndarray | None = None  # keyframe pts, sorted
    self._info: VideoInfo | None = None

  # -- lifecycle ----------------------------------------------------------------------------------

  def _open(self) -> None:
    try:
      self._container = av.open(self.path)
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
      raise VideoError(
          f"{self.path} is not a readable video container ({e}); pass a complete video file "
          "(mp4, mkv, webm, avi, ...)") from None
    if not self._container.streams.video:
      kinds = sorted({s.type for s in self._container.streams})
      self._container.close()
      raise VideoError(
          f"{self.path} has no video stream (it contains: {', '.join(kinds) or 'no streams'}); "
          "an audio-only file cannot be sampled, pass a file with a video track")
    self._stream = self._container.streams.video[0]
    if self._threads:
      self._stream.thread_type = "AUTO"
    self._used = False

  def _rewind(self) -> None:
    """Back to the start; reopening works for every container, seeking to 0 does not."""
    if self._used:
      self._container.close()
      self._open()
    self._used = True

  def close(self) -> None:
    self._container.close()

  def __enter__(self) -> "VideoReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- metadata -----------------------------------------------------------------------------------

  @property
  def info(self) -> VideoInfo:
    if self._info is None:
      n = len(self._table())
      rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
      fps = float(rate) if rate else 0.0
      if self._stream.duration is not None and self._stream.time_base is not None:
        duration = float(self._stream.duration * self._stream.time_base)
      elif fps > 0:
        duration = n / fps
      else:
        duration = float(self._container.duration or 0) / av.time_base
      if fps <= 0 and duration > 0:
        fps = n / duration
      cc = self._stream.codec_context
      self._info = VideoInfo(self.path, n, fps, duration, cc.width, cc.height, cc.name)
    return self._info

  def _table(self) -> np.ndarray:
    """Sorted presentation timestamps of every frame, from packets; raises if there are none."""
    if self._pts is None:
      pts, keys, missing = [], [], False
      try:
        self._rewind()
        for packet in self._container.demux(self._stream):
          if packet.size == 0 or packet.is_discard:
            continue
          if packet.pts is None:
            missing = True
            break
          pts.append(packet.pts)
          if packet.is_keyframe:
            keys.append(packet.pts)
      except av.error.FFmpegError as e:
        raise VideoError(f"{self.path}: the container is corrupt ({e})") from None
      if missing:  # raw streams without timestamps: count by decoding once
        pts = [f.pts if f.pts is not None else i for i, f in enumerate(self._decode_from(None))]
        keys = pts[:1]
      if not pts or next(self._decode_from(None), None) is None:
        raise VideoError(
            f"{self.path}: the video stream has no decodable frames (empty or truncated file)")
      self._pts = np.sort(np.asarray(pts, dtype=np.int64))
      self._key_pts = np.sort(np.asarray(keys or pts[:1], dtype=np.int64))
    return self._pts

  def _seconds(self, pts: int | None, fallback: int) -> float:
    start = self._stream.start_time or 0
    if pts is None:
      return fallback / self.info.fps if self.info.fps else float(fallback)
    return float((pts - start) * self._time_base)

  # -- decoding -----------------------------------------------------------------------------------

  def _decode_from(self, seek_pts: int | None) -> Iterator[av.VideoFrame]:
    decoded = 0
    try:
      if seek_pts is None or seek_pts <= self._key_pts[0]:
        self._rewind()
      else:
        try:
          self._container.seek(int(seek_pts), stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError:  # not seekable: decode from the start instead
          self._rewind()
        self._used = True
      for frame in self._container.decode(self._stream):
        decoded += 1
        yield frame
    except av.error.FFmpegError as e:
      if decoded == 0 and seek_pts is None:
        raise VideoError(f"{self.path}: the video stream has no decodable frames ({e}); the file "
                         "is corrupt or truncated") from None
      raise VideoError(f"{self.path}: decoding failed ({e})") from None

  @staticmethod
  def _to_rgb(frame: av.VideoFrame, size: Size | None) -> np.ndarray:
    if size is None:
      return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()

  def read(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> Frames:
    """Frames at `indices` (any order, repeats allowed), exact to the frame."""
    _check_size(size, self.path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    table = self._table()
    n = len(table)
    if idx.size and (idx.min() < -n or idx.max() >= n):
      bad = idx[(idx < -n) | (idx >= n)][0]
      raise IndexError(f"frame index {bad} out of range for {self.path} ({n} frames)")
    idx = np.where(idx < 0, idx + n, idx)
    wanted = np.unique(idx)
    got: dict[int, tuple[np.ndarray, float]] = {}
    it: Iterator[av.VideoFrame] | None = None
    pos = -1  # index of the last frame decoded by `it`
    for i in wanted:
      target = table[i]
      key = self._key_pts[np.searchsorted(self._key_pts, target, side="right") - 1] \
          if self._key_pts[0] <= target else self._key_pts[0]
      # Decoding on beats a seek unless a keyframe lies between here and the target.
      if it is None or i <= pos or key > table[pos]:
        it = self._decode_from(key)
        pos = -1
      for frame in it:
        if frame.pts is None:
          continue
        pos = int(np.searchsorted(table, frame.pts))
        if frame.pts == target:
          got[int(i)] = (self._to_rgb(frame, size), self._seconds(frame.pts, i))
          break
        if frame.pts > target:
          raise VideoError(f"{self.path}: frame {i} (pts {target}) was not found after seeking; "
                           "the file's timestamps are inconsistent")
      else:
        raise VideoError(f"{self.path}: stream ended before frame {i}; the file is truncated")
    if not idx.size:
      w, h = size or (self.info.width, self.info.height)
      return Frames(np.zeros((0, h, w, 3), np.uint8), idx, np.zeros((0,), np.float64))
    frames = np.stack([got[int(i)][0] for i in idx])
    ts = np.asarray([got[int(i)][1] for i in idx], dtype=np.float64)
    return Frames(frames, idx, ts)

  def iter_chunks(self, chunk_size: int = 256, size: Size | None = None,
                  fps: float | None = None) -> Iterator[Frames]:
    """Sequential decode in chunks of at most `chunk_size` frames; memory stays bounded.

    `fps` resamples by keeping the first frame at or after each tick of a 1/fps clock (frames are
    dropped, never duplicated, so a target above the source rate keeps every frame).
    """
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if fps is not None and not fps > 0:
      raise ValueError(f"fps must be > 0, got {fps}")
    _check_size(size, self.path)
    period = 1.0 / fps if fps else 0.0
    next_t = 0.0
    buf, ids, ts = [], [], []
    count = 0
    for i, frame in enumerate(self._decode_from(None)):
      count += 1
      t = self._seconds(frame.pts, i)
      if fps:
        if t + 1e-9 < next_t:
          continue
        next_t += period * max(1, math.floor((t - next_t) / period + 1e-9) + 1)
      buf.append(self._to_rgb(frame, size))
      ids.append(i)
      ts.append(t)
      if len(buf) == chunk_size:
        yield Frames(np.stack(buf), np.asarray(ids, np.int64), np.asarray(ts, np.float64))
        buf, ids, ts = [], [], []
    if count == 0:
      raise VideoError(
          f"{self.path}: the video stream has no decodable frames (empty or truncated file)")
    if buf:
      yield Frames(np.stack(buf), np.asarray(ids, np.int64), np.asarray(ts, np.float64))


def _check_size(size: Size | None, path: str) -> None:
  if size is not None and (len(size) != 2 or min(size) < 1):
    raise ValueError(f"size must be (width, height) with both >= 1, got {size} for {path}")


def probe(path: str | os.PathLike) -> VideoInfo:
  with VideoReader(path) as r:
    return r.info


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray,
                size: Size | None = None) -> Frames:
  with VideoReader(path) as r:
    return r.read(indices, size)


def iter_frames(path: str | os.PathLike, chunk_size: int = 256, size: Size | None = None,
                fps: float | None = None) -> Iterator[Frames]:
  with VideoReader(path) as r:
    yield from r.iter_chunks(chunk_size, size, fps)


def read_all(path: str | os.PathLike, size: Size | None = None,
             fps: float | None = None) -> Frames:
  """Every frame at once; for short clips only (memory grows with length)."""
  chunks = list(iter_frames(path, 1024, size, fps))
  return Frames(np.concatenate([c.frames for c in chunks]),
                np.concatenate([c.indices for c in chunks]),
                np.concatenate([c.timestamps for c in chunks]))
