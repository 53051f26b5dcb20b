"""PyAV decoder: frame-accurate random access checked against a full sequential decode."""

from __future__ import annotations

import av
import numpy as np
import pytest

from longvid_jax.assets import asset
from longvid_jax.data import video


def encode_mp4(path, frames, fps=10, gop=None, bframes=None, faststart=False, crf=None):
  """Write RGB frames[T,H,W,3] as H.264 (yuv420p); returns the path."""
  out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
  st = out.add_stream("libx264", rate=fps)
  st.height, st.width = np.shape(frames)[1:3]
  st.pix_fmt = "yuv420p"
  if gop is not None:
    st.codec_context.gop_size = gop
  if bframes is not None:
    st.codec_context.max_b_frames = bframes
  if crf is not None:
    st.codec_context.options = {"crf": str(crf)}
  for img in frames:
    for p in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
      out.mux(p)
  for p in st.encode():
    out.mux(p)
  out.close()
  return path


def _write_mp4(path, n=40, fps=10, w=64, h=48, gop=8, bframes=2, faststart=False):
  """Every frame differs (moving bar + frame-dependent colour); short GOPs and B-frames make
  seeking non-trivial. `faststart` puts the index (which lists every frame) before the data."""
  frames = np.zeros((n, h, w, 3), np.uint8)
  for i in range(n):
    frames[i, ..., 0] = (i * 6) % 256
    frames[i, :, (i * 3) % w:(i * 3) % w + 6, 1] = 255
    frames[i, (i * 2) % h:(i * 2) % h + 4, :, 2] = 200
  return encode_mp4(path, frames, fps, gop, bframes, faststart, crf=10)


@pytest.fixture(scope="module")
def small_mp4(tmp_path_factory):
  return _write_mp4(tmp_path_factory.mktemp("vid") / "small.mp4")


def _sequential(path, size=None):
  """Independent ground truth: PyAV's own decode loop, no seeking, no code of ours."""
  with av.open(str(path)) as c:
    out = []
    for f in c.decode(video=0):
      if size:
        f = f.reformat(width=size[0], height=size[1], format="rgb24")
      out.append(f.to_ndarray(format="rgb24"))
  return np.stack(out)


def test_probe_small(small_mp4):
  info = video.probe(small_mp4)
  assert (info.num_frames, info.width, info.height, info.codec) == (40, 64, 48, "h264")
  assert info.fps == pytest.approx(10.0)
  assert info.duration == pytest.approx(4.0, abs=0.11)


@pytest.mark.parametrize("size", [None, (32, 24)])
def test_random_access_matches_sequential_small(small_mp4, size):
  truth = _sequential(small_mp4, size)
  idx = [39, 0, 17, 8, 9, 7, 17, 25, 1, -1, 38]  # unsorted, repeats, negative, across GOPs
  got = video.read_frames(small_mp4, idx, size=size)
  want = truth[np.asarray(idx) % len(truth)]
  assert got.frames.dtype == np.uint8 and got.frames.shape == want.shape
  np.testing.assert_array_equal(got.frames, want)
  np.testing.assert_array_equal(got.indices, np.asarray(idx) % 40)
  np.testing.assert_allclose(got.timestamps, (np.asarray(idx) % 40) / 10.0, atol=1e-6)


def test_every_frame_by_index_small(small_mp4):
  truth = _sequential(small_mp4)
  got = video.read_frames(small_mp4, np.arange(40)[::-1])
  np.testing.assert_array_equal(got.frames, truth[::-1])


def test_random_access_matches_sequential_real_clip():
  path = asset("cuts_video")
  truth = _sequential(path, (48, 27))
  assert len(truth) == 5301
  rng = np.random.default_rng(0)
  idx = np.concatenate([[0, 5300, 2649, 2650, 2651], rng.integers(0, 5301, 20)])
  got = video.read_frames(path, idx, size=(48, 27))
  np.testing.assert_array_equal(got.frames, truth[idx])
  np.testing.assert_allclose(got.timestamps, idx / 25.0, atol=1e-6)
  # streaming gives the same frames, in chunks no larger than asked
  chunks = list(video.iter_frames(path, chunk_size=1000, size=(48, 27)))
  assert [len(c) for c in chunks] == [1000] * 5 + [301]
  np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), truth)
  np.testing.assert_array_equal(np.concatenate([c.indices for c in chunks]), np.arange(5301))


def test_streaming_chunks_and_timestamps(small_mp4):
  truth = _sequential(small_mp4)
  chunks = list(video.iter_frames(small_mp4, chunk_size=7))
  assert [len(c) for c in chunks] == [7] * 5 + [5]
  allf = video.read_all(small_mp4)
  np.testing.assert_array_equal(allf.frames, truth)
  np.testing.assert_array_equal(allf.indices, np.arange(40))
  np.testing.assert_allclose(allf.timestamps, np.arange(40) / 10.0, atol=1e-6)


def test_resample_fps(small_mp4):
  half = video.read_all(small_mp4, fps=5)
  np.testing.assert_array_equal(half.indices, np.arange(0, 40, 2))
  np.testing.assert_array_equal(half.frames, _sequential(small_mp4)[::2])
  third = video.read_all(small_mp4, fps=10 / 3)
  np.testing.assert_array_equal(third.indices, np.arange(0, 40, 3))
  # above the source rate: nothing is duplicated
  np.testing.assert_array_equal(video.read_all(small_mp4, fps=30).indices, np.arange(40))


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.mp4"):
    video.probe(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path):
  bad = tmp_path / "junk.mp4"
  bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  with pytest.raises(video.VideoError, match="junk.mp4"):
    video.probe(bad)


def test_truncated_video(tmp_path, small_mp4):
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(small_mp4.read_bytes()[:300])  # header only, no frames reachable
  with pytest.raises(video.VideoError, match="cut.mp4"):
    video.read_all(cut)


def test_audio_only(tmp_path):
  path = tmp_path / "tone.wav"
  out = av.open(str(path), "w")
  st = out.add_stream("pcm_s16le", rate=8000)
  t = np.arange(8000) / 8000
  frame = av.AudioFrame.from_ndarray(
      (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16)[None], format="s16", layout="mono")
  frame.sample_rate = 8000
  for p in st.encode(frame):
    out.mux(p)
  for p in st.encode():
    out.mux(p)
  out.close()
  with pytest.raises(video.VideoError, match=r"tone\.wav.*no video stream.*audio"):
    video.probe(path)


def _no_decodable_frames(path):
  """A valid container whose only video packet is garbage."""
  out = av.open(str(path), "w")
  st = out.add_stream("h264", rate=10)
  st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
  out.start_encoding()
  packet = av.Packet(b"\x00\x00\x00\x01" + bytes(range(200)))
  packet.stream, packet.pts, packet.dts, packet.time_base = st, 0, 0, st.time_base
  out.mux(packet)
  out.close()


def test_zero_decodable_frames(tmp_path):
  """A valid container whose only video packet is garbage: demuxes, but decodes to nothing."""
  path = tmp_path / "empty.mkv"
  _no_decodable_frames(path)
  with pytest.raises(video.VideoError, match=r"empty\.mkv.*no decodable frames"):
    video.probe(path)
  with pytest.raises(video.VideoError, match=r"empty\.mkv"):
    video.read_all(path)


def test_bad_arguments(small_mp4):
  with pytest.raises(IndexError, match="40 frames"):
    video.read_frames(small_mp4, [40])
  with pytest.raises(ValueError, match="size"):
    video.read_frames(small_mp4, [0], size=(0, 10))
  with pytest.raises(ValueError, match="chunk_size"):
    next(video.iter_frames(small_mp4, chunk_size=0))


def test_timestamps_from_packets(small_mp4):
  with video.VideoReader(small_mp4) as r:
    np.testing.assert_allclose(r.timestamps(), np.arange(40) / 10.0, atol=1e-6)


def test_resample_indices_matches_streaming(small_mp4):
  ts = np.arange(40) / 10.0
  for fps in (5, 10 / 3, 2.5, 30, None):
    np.testing.assert_array_equal(video.resample_indices(ts, fps),
                                  video.read_all(small_mp4, fps=fps).indices)
  with pytest.raises(ValueError, match="fps"):
    video.resample_indices(ts, 0)


def test_frame_folder(tmp_path, small_mp4):
  from PIL import Image
  truth = _sequential(small_mp4)[:12]
  folder = tmp_path / "frames"
  folder.mkdir()
  for i, f in enumerate(truth):  # natural order: frame_2 before frame_10
    Image.fromarray(f).save(folder / f"frame_{i}.png")
  (folder / "notes.txt").write_text("not a frame")
  with video.open_video(folder, folder_fps=4.0) as r:
    assert isinstance(r, video.FrameFolder)
    assert (r.info.num_frames, r.info.width, r.info.height) == (12, 64, 48)
    got = r.read([11, 2, 10])
    np.testing.assert_array_equal(got.frames, truth[[11, 2, 10]])
    np.testing.assert_allclose(got.timestamps, [2.75, 0.5, 2.5])
    small = r.read([3], size=(32, 24)).frames
    assert small.shape == (1, 24, 32, 3) and small.dtype == np.uint8
    chunks = list(r.iter_chunks(chunk_size=4, fps=2.0))
    np.testing.assert_array_equal(np.concatenate([c.indices for c in chunks]), [0, 2, 4, 6, 8, 10])
  assert isinstance(video.open_video(small_mp4), video.VideoReader)



def test_prefetch_keeps_order_raises_and_stops_with_its_consumer():
  import time  # pylint: disable=g-import-not-at-top
  assert list(video.prefetch(iter(range(10)), depth=2)) == list(range(10))

  def bad():
    yield 1
    raise video.VideoError("boom", "corrupt")

  with pytest.raises(video.VideoError, match="boom"):
    list(video.prefetch(bad()))
  produced = []

  def counting():
    for i in range(1000):
      produced.append(i)
      yield i

  g = video.prefetch(counting(), depth=1)
  assert next(g) == 0
  g.close()  # the consumer stops early: so does the producer, at most depth + 2 items ahead
  n = len(produced)
  time.sleep(0.3)
  assert len(produced) == n <= 3
