"""Feature cache: hits reuse features, any change to video, sampling or encoder is a miss."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_pipeline import CharTok
from test_video import _write_mp4

from longvid_jax import config as config_lib
from longvid_jax.data import features, pipeline, records


def encode(frames):
  """Stand-in encoder: 4x4 mean pooling, frames[T,16,16,3] → features[T,4,4,3]."""
  t = frames.shape[0]
  return frames.reshape(t, 4, 4, 4, 4, 3).mean((2, 4))


PARAMS = {"conv": {"kernel": np.ones((3, 3), np.float32)}}


@pytest.fixture()
def setup(tmp_path):
  recs = []
  for j, n in enumerate((12, 16)):
    _write_mp4(tmp_path / f"v{j}.mp4", n=n, fps=10, w=32, h=24, gop=4, bframes=0)
    recs.append(records.Record(id=f"r{j}", video=str(tmp_path / f"v{j}.mp4"),
                               turns=(("Q?", f"A{j}"),)))
  records.write_manifest(tmp_path / "train.jsonl", recs)
  cfg = config_lib.data(
      source="manifest", manifest=str(tmp_path / "train.jsonl"), num_frames=4, image_size=16,
      seq_len=160, features=str(tmp_path / "cache"), timestamps=True)
  fp = features.encoder_fingerprint("pool", "tiny", {}, PARAMS)
  return tmp_path, recs, cfg, fp


def test_fingerprint_tracks_params():
  a = features.encoder_fingerprint("siglip", "tiny", {"x": 1}, PARAMS)
  assert a == features.encoder_fingerprint("siglip", "tiny", {"x": 1}, PARAMS)
  other = {"conv": {"kernel": np.full((3, 3), 1.001, np.float32)}}
  assert len({a, features.encoder_fingerprint("siglip", "tiny", {"x": 1}, other),
              features.encoder_fingerprint("siglip", "tiny", {"x": 2}, PARAMS),
              features.encoder_fingerprint("siglip", "base", {"x": 1}, PARAMS)}) == 4


def test_cache_hit_matches_frames(setup):
  tmp, recs, cfg, fp = setup
  stats = features.precompute(recs, cfg, encode, fp, cfg.features, shard_bytes=500)
  assert stats == {"written": 2, "cached": 0, "skipped": {}}
  assert len(list((tmp / "cache").glob("shard-*.safetensors"))) == 2  # small shards: one each
  assert features.precompute(recs, cfg, encode, fp, cfg.features)["cached"] == 2
  ds = pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0, encoder_fingerprint=fp)
  frame_cfg = config_lib.data(**{**cfg.to_dict(), "features": None})
  ref = pipeline.dataset(frame_cfg, "qa", CharTok(), 4, 2, seed=0)
  b, r = ds[0], ref[0]
  assert "frames" not in b and b["features"].shape == (2, 4, 4, 4, 3)
  assert b["features"].dtype == np.float32
  np.testing.assert_allclose(b["features"], encode(r["frames"].reshape(8, 16, 16, 3)).reshape(
      2, 4, 4, 4, 3), atol=1e-6)
  np.testing.assert_array_equal(b["input_ids"], r["input_ids"])  # same timestamp sentence


def test_records_of_one_video_are_encoded_once(setup):
  """A benchmark writes a record per question: its video's later records hit the entry the
  first one left, before any shard is flushed."""
  tmp, recs, cfg, fp = setup
  calls = []
  def counting(frames):
    calls.append(frames.shape)
    return encode(frames)
  same = [records.Record(id=f"q{i}", video=recs[0].video, turns=((f"Q{i}?", "a"),))
          for i in range(3)]
  assert features.precompute(same + recs[1:], cfg, counting, fp, cfg.features) == {
      "written": 2, "cached": 2, "skipped": {}}
  assert len(calls) == 2
  with features.FeatureCache(tmp / "other") as cache:  # an unflushed entry reads back as well
    key = features.entry_key(recs[0], cfg, fp)
    cache.put(key, {"features": np.ones((4, 4, 4, 3), np.float32)})
    assert key in cache and cache.get(key)["features"].sum() == 192


def test_a_shard_is_opened_once_for_all_its_reads(tmp_path, monkeypatch):
  """Opening a shard parses the names of all its entries; a training step reads 16 entries, so
  opening per read cost more CPU than the model's step shares with the input threads."""
  opened = []
  real = features.safe_open
  monkeypatch.setattr(features, "safe_open", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
  keys = [features.Key(f"v{i}", {"i": i}) for i in range(6)]
  with features.FeatureCache(tmp_path) as cache:
    for i, k in enumerate(keys[:3]):
      cache.put(k, {"features": np.full((2, 2), i, np.float32)})
  with features.FeatureCache(tmp_path) as cache:  # a second shard, written by another writer
    for i, k in enumerate(keys[3:], 3):
      cache.put(k, {"features": np.full((2, 2), i, np.float32)})
  cache = features.FeatureCache(tmp_path)
  for _ in range(3):
    for i, k in enumerate(keys):
      assert cache.get(k)["features"].tolist() == [[i, i], [i, i]]
  assert len(opened) == len(set(opened)) == 2


def test_stale_entries_are_never_used(setup, caplog):
  tmp, recs, cfg, fp = setup
  features.precompute(recs, cfg, encode, fp, cfg.features)
  # the video is rewritten (new size and mtime): its entry no longer matches
  _write_mp4(tmp / "v1.mp4", n=14, fps=10, w=32, h=24, gop=4, bframes=0)
  os.utime(tmp / "v1.mp4", ns=(1, 1))
  ds = pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0, encoder_fingerprint=fp)
  ds[0]
  assert dict(ds.skips.counts) == {"feature_cache_miss": 1}
  assert "v1.mp4 are stale: video changed" in caplog.text
  # a different encoder or sampling misses everything, and says why
  cfg.strict = True
  other = features.encoder_fingerprint("pool", "tiny", {}, {"conv": {"kernel": np.zeros((3, 3))}})
  with pytest.raises(records.RecordError, match="stale: encoder changed"):
    pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0, encoder_fingerprint=other)[0]
  cfg.num_frames = 3
  with pytest.raises(records.RecordError, match="stale: sampling changed"):
    pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0, encoder_fingerprint=fp)[0]
  # after a new precompute the rewritten video hits again
  cfg.num_frames = 4
  assert features.precompute(recs, cfg, encode, fp, cfg.features) == {
      "written": 1, "cached": 1, "skipped": {}}
  pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0, encoder_fingerprint=fp)[0]


def test_content_hash_survives_a_move(setup):
  tmp, recs, cfg, fp = setup
  cfg.features_content_hash = True
  features.precompute(recs[:1], cfg, encode, fp, cfg.features)
  moved = tmp / "moved.mp4"
  os.rename(recs[0].video, moved)
  cache = features.FeatureCache(cfg.features)
  assert cache.get(features.entry_key(records.Record(id="m", video=str(moved)), cfg, fp))


def test_features_need_a_fingerprint(setup):
  _, _, cfg, _ = setup
  with pytest.raises(ValueError, match="fingerprint"):
    pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0)
