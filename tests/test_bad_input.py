"""Bad input never hangs or stops a run: each kind is a counted skip, or an error naming the
record with data.strict. Every bad file is crafted here, at run time."""

from __future__ import annotations

import collections
import json
import os

import av
import numpy as np
import pytest
from PIL import Image
from test_pipeline import CharTok
from test_video import _no_decodable_frames, _write_mp4

from longvid_jax import config as config_lib
from longvid_jax.data import clips, pipeline, records, video


def _audio_only(path):
  out = av.open(str(path), "w")
  st = out.add_stream("pcm_s16le", rate=8000)
  frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
  frame.sample_rate = 8000
  for p in [*st.encode(frame), *st.encode()]:
    out.mux(p)
  out.close()


def _mixed_sizes(path):
  path.mkdir()
  for i, size in enumerate([(16, 12), (16, 12), (20, 12)]):
    Image.new("RGB", size, (i * 60, 0, 0)).save(path / f"frame_{i}.png")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
  """name → (path, expected skip reason)."""
  d = tmp_path_factory.mktemp("bad")
  good = _write_mp4(d / "good.mp4", n=12, fps=10, w=32, h=24, gop=4, bframes=0)
  raw = good.read_bytes()
  out = {"good": (good, None)}
  out["missing"] = (d / "missing.mp4", "missing_file")
  (d / "truncated.mp4").write_bytes(raw[:300])
  out["truncated"] = (d / "truncated.mp4", "corrupt")
  rng = np.random.default_rng(0)
  (d / "garbage.mp4").write_bytes(raw[:32] + rng.integers(0, 256, 4000, np.uint8).tobytes())
  out["garbage"] = (d / "garbage.mp4", "corrupt")
  _no_decodable_frames(d / "empty.mkv")
  out["no_frames"] = (d / "empty.mkv", "no_frames")
  _audio_only(d / "tone.wav")
  out["audio_only"] = (d / "tone.wav", "no_video_stream")
  # the sample description names a codec no decoder knows
  (d / "unknown_codec.mp4").write_bytes(raw.replace(b"avc1", b"zzzz"))
  out["unsupported_codec"] = (d / "unknown_codec.mp4", "unsupported_codec")
  _mixed_sizes(d / "frames_mixed")
  out["mixed_sizes"] = (d / "frames_mixed", "mixed_frame_sizes")
  os.mkfifo(d / "pipe.mp4")  # opening a FIFO would block forever
  out["fifo"] = (d / "pipe.mp4", "not_a_file")
  return out


def _cfg(manifest, **kw):
  return config_lib.data(source="manifest", manifest=str(manifest), num_frames=3, image_size=8,
                         seq_len=160, **kw)


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage", "no_frames", "audio_only",
                                  "unsupported_codec", "mixed_sizes", "fifo"])
def test_reader_names_the_reason(bad_files, kind):
  path, reason = bad_files[kind]
  with pytest.raises((video.VideoError, FileNotFoundError)) as e:
    with video.open_video(path, timeout=10) as r:
      r.read([0])
  assert video.error_reason(e.value) == reason
  assert path.name in str(e.value)


def test_timeout(bad_files):
  with pytest.raises(video.VideoTimeout, match="good.mp4.*longer than"):
    with video.VideoReader(bad_files["good"][0], timeout=0.0) as r:
      r.read([5])


def _manifest(path, bad_files, kinds, extra_lines=()):
  lines = [json.dumps(records.Record(id=k, video=str(bad_files[k][0]),
                                     turns=(("Q?", "A"),)).to_json()) for k in kinds]
  path.write_text("\n".join([*lines, *extra_lines]) + "\n")
  return path


def test_bad_records_are_counted_skips(bad_files, tmp_path, caplog):
  kinds = [k for k in bad_files if k != "good"]
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["good", *kinds, "good"],
                ['{"id": "x", "video": ', '{"id": "no-video"}'])
  ds = pipeline.dataset(_cfg(m), "qa", CharTok(), 3, 1, seed=0)
  good = clips.load_clip(records.Record(id="g", video=str(bad_files["good"][0])), _cfg(m))
  n = len(kinds) + 2
  for i in range(n + 1):  # one epoch and the first batch of the next
    np.testing.assert_allclose(ds[i]["frames"][0], good.frames / 255.0)
  want = collections.Counter(bad_files[k][1] for k in kinds)
  want["bad_manifest_line"] = 2
  assert dict(ds.skips.counts) == want
  assert "skipped 10 bad records" in ds.skips.summary()
  assert "epoch 0: skipped" in caplog.text  # the epoch summary
  assert "m.jsonl:11" in caplog.text and "unsupported_codec" in caplog.text


def test_skips_keep_batches_a_function_of_the_index(bad_files, tmp_path):
  """A fresh dataset (no skip memory) reading batch i directly gives the same batch."""
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["missing", "good", "audio_only", "good"])
  a = pipeline.dataset(_cfg(m), "qa", CharTok(), 3, 2, seed=4)
  seq = [a[i]["input_ids"] for i in range(4)]
  b = pipeline.dataset(_cfg(m), "qa", CharTok(), 3, 2, seed=4)
  np.testing.assert_array_equal(b[3]["input_ids"], seq[3])


@pytest.mark.parametrize("kind", ["missing", "truncated", "audio_only", "mixed_sizes"])
def test_strict_raises_naming_the_record(bad_files, tmp_path, kind):
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["good", kind])
  ds = pipeline.dataset(_cfg(m, strict=True), "qa", CharTok(), 3, 2, seed=0)
  with pytest.raises(records.RecordError, match=f"record '{kind}'") as e:
    ds[0]
  assert e.value.reason == bad_files[kind][1]


def test_strict_bad_manifest_line(bad_files, tmp_path):
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["good"], ['{"id": "x"'])
  with pytest.raises(ValueError, match="m.jsonl:2"):
    pipeline.dataset(_cfg(m, strict=True), "qa", CharTok(), 3, 1, seed=0)


def test_manifest_line_not_utf8_is_a_counted_skip(bad_files, tmp_path, caplog):
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["good"])
  good = m.read_bytes()
  m.write_bytes(good + b"\xff\xfe bad\n" + good.replace(b'"good"', b'"good2"', 1))
  got = list(records.read_manifest(m))
  assert [n for n, _ in got] == [1, 2, 3]
  assert isinstance(got[1][1], ValueError) and "m.jsonl:2" in str(got[1][1])
  assert "UTF-8" in str(got[1][1]) and got[2][1].id == "good2"
  src = pipeline.ManifestSource(_cfg(m), "train", "qa", CharTok(), 3)
  assert [r.id for r in src.records] == ["good", "good2"]
  assert dict(src.skips.counts) == {"bad_manifest_line": 1}
  assert "m.jsonl:2" in caplog.text
  with pytest.raises(ValueError, match="m.jsonl:2: not valid UTF-8"):
    pipeline.dataset(_cfg(m, strict=True), "qa", CharTok(), 3, 1, seed=0)


def test_all_bad_is_an_error_not_a_hang(bad_files, tmp_path):
  m = _manifest(tmp_path / "m.jsonl", bad_files, ["good", "good"])
  ds = pipeline.dataset(_cfg(m, decode_timeout=0.0), "qa", CharTok(), 3, 1, seed=0)
  with pytest.raises(ValueError, match=r"every record.*timeout: 1"):
    ds[0]


# -- a truncated mp4 whose index (at the front) lists frames past the cut -------------------------


@pytest.fixture(scope="module")
def cut_mp4(tmp_path_factory):
  d = tmp_path_factory.mktemp("cut")
  raw = _write_mp4(d / "full.mp4", n=100, faststart=True).read_bytes()
  (d / "cut.mp4").write_bytes(raw[:int(len(raw) * 0.3)])
  return d / "cut.mp4"


def _decodable(path) -> tuple[int, int, int]:
  """(frames that decode, packets demuxed, frames the header lists), from PyAV alone: every
  packet is fed to the decoder and those it rejects are passed over."""
  with av.open(str(path)) as c:
    st = c.streams.video[0]
    frames = packets = 0
    for p in c.demux(st):
      packets += p.size > 0
      try:
        frames += len(p.decode())
      except av.error.FFmpegError:
        pass
    return frames, packets, st.frames


def test_truncated_index_counts_what_decodes(cut_mp4, caplog):
  n, packets, listed = _decodable(cut_mp4)
  assert 8 < n < packets < listed == 100  # the index promises more than the file holds
  with video.VideoReader(cut_mp4) as r:
    info = r.info
    last = r.read([n - 1])
  assert info.num_frames == n and info.truncated
  assert info.duration == pytest.approx(n / 10)
  assert "cut.mp4 is truncated" in caplog.text
  every = video.read_all(cut_mp4)
  assert len(every) == n
  np.testing.assert_array_equal(last.frames[0], every.frames[-1])
  assert not video.probe(_write_mp4(cut_mp4.parent / "whole.mp4", n=12)).truncated


def _cli():
  import argparse

  from longvid_jax.evaluate import shot_commands as commands
  ap = argparse.ArgumentParser()
  commands.register(ap.add_subparsers())
  return ap


@pytest.mark.slow  # decode + the real shot detector, through the CLI
def test_truncated_index_shots_sample_and_pipeline_agree(cut_mp4, tmp_path, capsys):
  n = _decodable(cut_mp4)[0]
  args = _cli().parse_args(["shots", str(cut_mp4), "--json"])
  assert args.func(args) == 0
  got = json.loads(capsys.readouterr().out)
  assert got["num_frames"] == len(got["timestamps"]) == n
  args = _cli().parse_args(["sample", str(cut_mp4), "--k", "8", "--json"])
  rc = args.func(args)
  out, err = capsys.readouterr()
  assert rc == 0, err
  got = json.loads(out)
  assert got["num_frames"] == n and len(got["indices"]) == 8 and max(got["indices"]) < n
  # the Grain pipeline's adaptive sampler scores the same frames it samples from
  rec = records.Record(id="cut", video=str(cut_mp4), turns=(("Q?", "A"),))
  m = tmp_path / "m.jsonl"
  m.write_text(json.dumps(rec.to_json()) + "\n")
  ds = pipeline.dataset(_cfg(m, sampler="avs"), "qa", CharTok(), 3, 1, seed=0)
  assert ds[0]["frames"].shape == (1, 3, 8, 8, 3)
  assert not ds.skips.counts, ds.skips.summary()


def test_sample_errors_name_the_video(tmp_path, capsys):
  path = _write_mp4(tmp_path / "clip.mp4", n=12)
  args = _cli().parse_args(["sample", str(path), "--k", "0", "--method", "uniform"])
  assert args.func(args) == 2  # raised by the sampler, which never sees the path
  assert "clip.mp4" in capsys.readouterr().err


def test_a_defect_in_the_program_is_raised_not_skipped():
  """A bad video is a counted skip; an error of the program itself (a missing attribute, a
  failed assertion) stops the evaluation, since skipping every record over it would hide it."""
  from longvid_jax.evaluate import benchmark  # pylint: disable=g-import-not-at-top
  recs = [records.Record(id=f"q{i}", video=f"v{i}.mp4", turns=(("q?", "a"),), options=("a", "b"),
                         answer_index=0) for i in range(2)]

  def answerer(error):
    def answer(r):
      if r.id == "q1":
        raise error
      return {"choice": 0}
    return answer

  res = benchmark.evaluate(recs, answerer(OSError("cut short")))
  assert res["summary"]["n"] == 1 and res["skipped"][0]["reason"] == "OSError"
  with pytest.raises(AttributeError, match="no attribute 'cite'"):
    benchmark.evaluate(recs, answerer(AttributeError("module has no attribute 'cite'")))
