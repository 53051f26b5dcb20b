"""Video decoding with PyAV: metadata, frame-accurate random access and bounded-memory streaming.

Frame index `i` always means the i-th frame in presentation order, the same frame a full
sequential decode yields at position `i`. Random access finds the frame's presentation timestamp
in a table built by demuxing packets (cheap: no decoding), seeks to the keyframe before it and
decodes forward, so reads are exact even for streams with B-frames or variable frame rate.

Frames come out as uint8 RGB `frames[N,H,W,3]` with their indices and timestamps (seconds from the
start of the stream). `size=(W, H)` resizes inside the decoder (swscale), so full-resolution
frames never reach NumPy.

Untrusted files: `timeout` bounds each call (and each streamed chunk) and is also FFmpeg's I/O
interrupt, so a file that stalls or decodes forever raises `VideoTimeout` instead of hanging a data
worker. Only regular files are opened (a FIFO would block in open(2), before any timeout can act).
Every `VideoError` has a short `reason` ("corrupt", "no_frames", ...) for skip statistics.

Truncated files: a file cut short (a partial download, a `faststart` mp4 whose index lists frames
past the cut) has packets that cannot decode. Packets cut off by the end of the file are dropped,
and when any are (or the header lists more frames than the file holds) the frame table is rebuilt
from one decoding pass, so `num_frames` is what decodes; `info.truncated` says so and a warning
names the file. Every consumer (shot detection, samplers, evaluation) then agrees on one count.

A folder of frame images (`FrameFolder`) reads like a video; `open_video` picks the right reader.
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import queue
import stat
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

log = logging.getLogger(__name__)
_warned_truncated: set[str] = set()  # one warning per file and process, not one per open

Size = tuple[int, int]  # (width, height), the order ffmpeg and PyAV use


class VideoError(ValueError):
  """A file that cannot be read as a video; the message names the file and the problem."""

  def __init__(self, message: str, reason: str = "corrupt"):
    super().__init__(message)
    self.reason = reason


class VideoTimeout(VideoError):
  """Decoding took longer than the reader's `timeout`."""

  def __init__(self, message: str):
    super().__init__(message, "timeout")


# errors of the program, not of its input: skipping a record over them would hide a defect
BUGS = (AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


def error_reason(e: BaseException) -> str:
  """Short cause of a failed read, the key skip statistics are counted under."""
  if isinstance(e, FileNotFoundError):
    return "missing_file"
  return getattr(e, "reason", None) or type(e).__name__


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  path: str
  num_frames: int
  fps: float  # average frame rate of the video stream
  duration: float  # seconds, num_frames / fps when the container does not say
  width: int
  height: int
  codec: str
  truncated: bool = False  # the file is cut short; num_frames counts the frames that decode


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

  def __init__(self, path: str | os.PathLike, threads: bool = True, timeout: float | None = None):
    self.path = str(path)
    if not os.path.exists(self.path):
      raise FileNotFoundError(f"video file not found: {self.path}")
    if os.path.isdir(self.path):
      raise VideoError(f"{self.path} is a directory, not a video file (use FrameFolder or "
                       "open_video for a folder of frames)", "not_a_file")
    if not stat.S_ISREG(os.stat(self.path).st_mode):
      raise VideoError(f"{self.path} is not a regular file (a pipe or device could block "
                       "forever); copy the video to a file", "not_a_file")
    self._threads = threads
    self._reformatter = VideoReformatter()  # keeps its scaler between frames (2-3x faster)
    self.timeout = timeout
    self._deadline = math.inf
    self._used = False  # whether the container has been read from (then rewinding reopens it)
    self._open()
    self._time_base = self._stream.time_base or fractions.Fraction(1, 1)
    self._pts: np.ndarray | None = None  # presentation timestamps, sorted
    self._key_pts: np.ndarray | None = None  # keyframe pts, sorted
    self._info: VideoInfo | None = None
    self._size = os.path.getsize(self.path)
    self.truncated = False  # set by the frame table when the file is cut short

  # -- lifecycle ----------------------------------------------------------------------------------

  def _open(self) -> None:
    try:
      self._container = av.open(self.path, timeout=self.timeout)
    except av.error.ExitError:
      raise VideoTimeout(f"{self.path}: opening took longer than {self.timeout} s") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
      raise VideoError(
          f"{self.path} is not a readable video container ({e}); pass a complete video file "
          "(mp4, mkv, webm, avi, ...)") from None
    if not self._container.streams.video:
      kinds = sorted({s.type for s in self._container.streams})
      self._container.close()
      raise VideoError(
          f"{self.path} has no video stream (it contains: {', '.join(kinds) or 'no streams'}); "
          "an audio-only file cannot be sampled, pass a file with a video track",
          "no_video_stream")
    self._stream = self._container.streams.video[0]
    if self._stream.codec_context is None:
      self._container.close()
      raise VideoError(
          f"{self.path}: this FFmpeg build has no decoder for the video codec; re-encode the "
          "file, e.g. to H.264",
          "unsupported_codec")
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

  def _start_clock(self) -> None:
    self._deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout

  def _check_clock(self) -> None:
    if time.monotonic() > self._deadline:
      raise VideoTimeout(f"{self.path}: decoding took longer than {self.timeout} s; the file is "
                         "pathological or the machine is overloaded (raise the timeout)")

  def __enter__(self) -> "VideoReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- metadata -----------------------------------------------------------------------------------

  @property
  def info(self) -> VideoInfo:
    if self._info is None:
      self._start_clock()
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
      if self.truncated and fps > 0:
        duration = min(duration, n / fps)  # the header's duration includes the missing frames
      cc = self._stream.codec_context
      self._info = VideoInfo(self.path, n, fps, duration, cc.width, cc.height, cc.name,
                             self.truncated)
    return self._info

  def _incomplete(self, packet: av.Packet) -> bool:
    """A packet cut off by the end of the file: it cannot decode, so it is not a frame."""
    if packet.is_corrupt:  # the demuxer read fewer bytes than the index promised
      return True
    pos = packet.pos
    return pos is not None and pos >= 0 and pos + packet.size > self._size

  def _table(self) -> np.ndarray:
    """Sorted presentation timestamps of every frame, from packets; raises if there are none."""
    if self._pts is None:
      pts, keys, missing, seen, dropped = [], [], False, 0, 0
      try:
        self._rewind()
        for packet in self._container.demux(self._stream):
          self._check_clock()
          if packet.size or packet.pos is not None:  # not the end-of-stream flush packet
            seen += 1
          if packet.size == 0 or packet.is_discard:
            continue
          if self._incomplete(packet):
            dropped += 1
            continue
          if packet.pts is None:
            missing = True
            break
          pts.append(packet.pts)
          if packet.is_keyframe:
            keys.append(packet.pts)
      except av.error.ExitError:
        self._check_clock()
        raise VideoTimeout(f"{self.path}: reading timed out") from None
      except av.error.FFmpegError as e:
        raise VideoError(f"{self.path}: the container is corrupt ({e})") from None
      listed = self._stream.frames or 0  # the header's count (0: the container does not say)
      self.truncated = bool(dropped) or (not missing and listed > seen)
      if missing or self.truncated:  # count by decoding once: what decodes is what there is
        decoded = [f.pts if f.pts is not None else i
                   for i, f in enumerate(self._decode_from(None))]
        if self.truncated and decoded and self.path not in _warned_truncated:
          _warned_truncated.add(self.path)
          log.warning("%s is truncated: %d frames decode of the %d the file lists; using %d "
                      "(re-download or re-encode the file to get them all)", self.path,
                      len(decoded), max(listed, seen), len(decoded))
        kept = set(decoded)
        pts, keys = decoded, ([] if missing else [k for k in keys if k in kept])
      if not pts or next(self._decode_from(None), None) is None:
        raise VideoError(
            f"{self.path}: the video stream has no decodable frames (empty or truncated file)",
            "no_frames")
      self._pts = np.sort(np.asarray(pts, dtype=np.int64))
      self._key_pts = np.sort(np.asarray(keys or pts[:1], dtype=np.int64))
    return self._pts

  def timestamps(self) -> np.ndarray:
    """[num_frames] float64 seconds of every frame, from packet timestamps (nothing decoded)."""
    self._start_clock()
    table = self._table()
    start = self._stream.start_time or 0
    return ((table - start) * float(self._time_base)).astype(np.float64)

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
      for packet in self._container.demux(self._stream):
        if packet.size and self._incomplete(packet):
          continue
        try:
          frames = packet.decode()
        except av.error.ExitError:
          raise
        except av.error.FFmpegError:
          if not self.truncated:
            raise
          continue  # a cut-off file: the frame table holds only what decodes
        for frame in frames:
          self._check_clock()
          decoded += 1
          yield frame
    except av.error.ExitError:
      self._check_clock()
      raise VideoTimeout(f"{self.path}: reading timed out") from None
    except av.error.FFmpegError as e:
      if decoded == 0 and seek_pts is None:
        raise VideoError(f"{self.path}: the video stream has no decodable frames ({e}); the file "
                         "is corrupt or truncated", "no_frames") from None
      raise VideoError(f"{self.path}: decoding failed ({e})") from None

  def _to_rgb(self, frame: av.VideoFrame, size: Size | None) -> np.ndarray:
    w, h = size or (frame.width, frame.height)
    return self._reformatter.reformat(frame, width=w, height=h, format="rgb24").to_ndarray()

  def read(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> Frames:
    """Frames at `indices` (any order, repeats allowed), exact to the frame."""
    _check_size(size, self.path)
    self._start_clock()
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
        raise VideoError(f"{self.path}: stream ended before frame {i}; the file is truncated",
                         "truncated")
    if not idx.size:
      w, h = size or (self.info.width, self.info.height)
      return Frames(np.zeros((0, h, w, 3), np.uint8), idx, np.zeros((0,), np.float64))
    frames = np.stack([got[int(i)][0] for i in idx])
    ts = np.asarray([got[int(i)][1] for i in idx], dtype=np.float64)
    return Frames(frames, idx, ts)

  def iter_chunks(self, chunk_size: int = 256, size: Size | None = None,
                  fps: float | None = None) -> Iterator[Frames]:
    """Sequential decode in chunks of at most `chunk_size` frames; memory stays bounded.

    `fps` resamples as `Resampler` does (frames are dropped, never duplicated). The timeout
    applies to each chunk, so long videos stream as long as they keep making progress.
    """
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    keep = Resampler(fps)
    _check_size(size, self.path)
    buf, ids, ts = [], [], []
    count = 0
    self._start_clock()
    for i, frame in enumerate(self._decode_from(None)):
      count += 1
      t = self._seconds(frame.pts, i)
      if not keep(t):
        continue
      buf.append(self._to_rgb(frame, size))
      ids.append(i)
      ts.append(t)
      if len(buf) == chunk_size:
        yield Frames(np.stack(buf), np.asarray(ids, np.int64), np.asarray(ts, np.float64))
        buf, ids, ts = [], [], []
        self._start_clock()
    if count == 0:
      raise VideoError(
          f"{self.path}: the video stream has no decodable frames (empty or truncated file)",
          "no_frames")
    if buf:
      yield Frames(np.stack(buf), np.asarray(ids, np.int64), np.asarray(ts, np.float64))


class Resampler:
  """Keeps the first frame at or after each tick of a 1/fps clock; `fps=None` keeps every frame.

  Frames are dropped, never duplicated, so a target above the source rate keeps them all. Call it
  with each frame's timestamp, in order.
  """

  def __init__(self, fps: float | None):
    if fps is not None and not fps > 0:
      raise ValueError(f"fps must be > 0, got {fps}")
    self.period = 1.0 / fps if fps else 0.0
    self.next_t = -math.inf if fps is None else 0.0

  def __call__(self, t: float) -> bool:
    if t + 1e-9 < self.next_t:
      return False
    if self.period:
      self.next_t += self.period * max(1, math.floor((t - self.next_t) / self.period + 1e-9) + 1)
    return True


def resample_indices(timestamps: np.ndarray, fps: float | None) -> np.ndarray:
  """Positions in `timestamps[N]` (ascending seconds) that streaming at `fps` would keep."""
  keep = Resampler(fps)
  return np.asarray([i for i, t in enumerate(np.asarray(timestamps, np.float64)) if keep(t)],
                    np.int64)


def _check_size(size: Size | None, path: str) -> None:
  if size is not None and (len(size) != 2 or min(size) < 1):
    raise ValueError(f"size must be (width, height) with both >= 1, got {size} for {path}")


# -- folders of frame images --------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _natural(name: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class FrameFolder:
  """A folder of frame images read like a video: frame i is the i-th file in natural order
  (frame_2 before frame_10) and is shown at i / fps seconds."""

  def __init__(self, path: str | os.PathLike, fps: float = 1.0, timeout: float | None = None):
    from PIL import Image  # only folders need it
    self._image = Image
    self.path = str(path)
    if not os.path.isdir(self.path):
      raise FileNotFoundError(f"frame folder not found: {self.path}")
    if not fps > 0:
      raise ValueError(f"fps must be > 0, got {fps}")
    self.fps, self.timeout = float(fps), timeout
    self._deadline = math.inf
    self.files = sorted((f for f in os.listdir(self.path)
                         if f.lower().endswith(IMAGE_SUFFIXES)), key=_natural)
    if not self.files:
      raise VideoError(f"{self.path}: the folder has no frame images "
                       f"({', '.join(IMAGE_SUFFIXES)})", "no_frames")
    self._info: VideoInfo | None = None

  def close(self) -> None:
    pass

  def __enter__(self) -> "FrameFolder":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  _start_clock = VideoReader._start_clock
  _check_clock = VideoReader._check_clock

  @property
  def info(self) -> VideoInfo:
    """Reads every image header (not the pixels) and insists on one frame size."""
    if self._info is None:
      self._start_clock()
      sizes: dict[tuple[int, int], str] = {}
      for f in self.files:
        self._check_clock()
        try:
          with self._image.open(os.path.join(self.path, f)) as im:
            sizes.setdefault(im.size, f)
        except (OSError, SyntaxError) as e:
          raise VideoError(f"{self.path}/{f} is not a readable image ({e})") from None
      if len(sizes) > 1:
        seen = ", ".join(f"{w}x{h} ({f})" for (w, h), f in sizes.items())
        raise VideoError(f"{self.path}: frames have mixed sizes: {seen}; resize them to one size",
                         "mixed_frame_sizes")
      (w, h), = sizes
      n = len(self.files)
      self._info = VideoInfo(self.path, n, self.fps, n / self.fps, w, h, "images")
    return self._info

  def timestamps(self) -> np.ndarray:
    return np.arange(self.info.num_frames, dtype=np.float64) / self.fps

  def _load(self, i: int, size: Size | None) -> np.ndarray:
    self._check_clock()
    try:
      with self._image.open(os.path.join(self.path, self.files[i])) as im:
        im = im.convert("RGB")
        if size is not None and im.size != tuple(size):
          im = im.resize(tuple(size), self._image.BILINEAR)
        return np.asarray(im, np.uint8)
    except (OSError, SyntaxError) as e:
      raise VideoError(f"{self.path}/{self.files[i]} is not a readable image ({e})") from None

  def read(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> Frames:
    _check_size(size, self.path)
    n = self.info.num_frames
    self._start_clock()
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
      raise IndexError(f"frame index out of range for {self.path} ({n} frames)")
    idx = np.where(idx < 0, idx + n, idx)
    w, h = size or (self.info.width, self.info.height)
    frames = np.zeros((len(idx), h, w, 3), np.uint8)
    for j, i in enumerate(idx):
      frames[j] = self._load(int(i), size)
    return Frames(frames, idx, idx / self.fps)

  def iter_chunks(self, chunk_size: int = 256, size: Size | None = None,
                  fps: float | None = None) -> Iterator[Frames]:
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    keep = resample_indices(self.timestamps(), fps)
    for a in range(0, len(keep), chunk_size):
      yield self.read(keep[a:a + chunk_size], size)


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
  """`items` produced on a background thread, at most `depth` ahead of the consumer: decoding
  the next chunk (PyAV and FFmpeg release the GIL) overlaps computing on this one, while memory
  stays `depth + 1` chunks whatever the video's length. The producer's errors reach the
  consumer; a consumer that stops early stops the producer."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def produce():
    try:
      for item in items:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(end)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
      q.put(e)

  worker = threading.Thread(target=produce, name="prefetch", daemon=True)
  worker.start()
  try:
    while True:
      item = q.get()
      if item is end:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while worker.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        pass
      worker.join(timeout=0.05)


def digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def video_identity(path: str | os.PathLike, content_hash: bool = False) -> dict[str, Any]:
  """What identifies a video's contents. `content_hash` reads the bytes (survives moves and
  copies); otherwise size and mtime stand in for them (cheap, changes on any rewrite)."""
  p = pathlib.Path(path).absolute()
  if p.is_dir():
    entries = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir())
    if content_hash:
      return {"folder_sha256": digest([(n, _file_sha256(p / n)) for n, _, _ in entries])}
    return {"path": str(p), "listing": digest(entries)}
  st = p.stat()
  if content_hash:
    return {"sha256": _file_sha256(p), "size": st.st_size}
  return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def open_video(path: str | os.PathLike, timeout: float | None = None,
               folder_fps: float = 1.0) -> VideoReader | FrameFolder:
  """A reader for a video file or a folder of frames (shown at `folder_fps`)."""
  if os.path.isdir(path):
    return FrameFolder(path, folder_fps, timeout)
  return VideoReader(path, timeout=timeout)


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
