"""Samplers: NMS / top-k / fill behaviour on crafted scores, and shared invariants."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from longvid_jax.sampling import samplers as S
from test_video import encode_mp4  # pylint: disable=g-bad-import-order


def _peaks(scores, window):
  return np.nonzero(np.asarray(S.nms_peaks(np.asarray(scores, np.float32), window)))[0].tolist()


def _brute_nms(s, w):
  """Plain-Python statement of the rule: strictly above the w before, >= the w after."""
  out = []
  for i in range(len(s)):
    left = s[max(0, i - w):i]
    right = s[i + 1:i + w + 1]
    if all(s[i] > x for x in left) and all(s[i] >= x for x in right):
      out.append(i)
  return out


def test_nms_plateau_and_ties():
  s = [0, 0.2, 0.9, 0.9, 0.9, 0.1, 0.0, 0.0, 0.9, 0.3]
  # plateau 2..4 → its first frame; the equal peak at 8 is 6 frames away, so it survives w=3
  assert _peaks(s, 3) == [2, 8]
  # with w=6 the later equal peak is suppressed by the earlier one
  assert _peaks(s, 6) == [2]
  assert 3 not in _peaks(s, 1) and 4 not in _peaks(s, 1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("w", [1, 2, 5])
def test_nms_matches_bruteforce(seed, w):
  rng = np.random.default_rng(seed)
  s = rng.integers(0, 4, 60).astype(np.float32) / 3  # many ties
  assert _peaks(s, w) == _brute_nms(s.tolist(), w)


def test_avs_topk_by_score_sorted_by_time():
  s = np.zeros(100, np.float32)
  s[[10, 30, 50, 70, 90]] = [0.6, 0.99, 0.7, 0.95, 0.8]
  sel = S.sample("avs", 3, num_frames=100, scores=s)
  assert sel.indices.tolist() == [30, 70, 90] and sel.valid.all()


def test_avs_tie_prefers_earlier():
  s = np.zeros(100, np.float32)
  s[[20, 40, 60]] = 0.9
  assert S.sample("avs", 2, num_frames=100, scores=s).indices.tolist() == [20, 40]


def test_avs_no_peaks_is_uniform():
  for s in [np.zeros(97), np.full(97, 0.3), np.linspace(0, 0.49, 97)]:
    a = S.sample("avs", 10, num_frames=97, scores=s)
    u = S.sample("uniform", 10, num_frames=97)
    np.testing.assert_array_equal(a.indices, u.indices)
  # uniform = centres of equal segments
  np.testing.assert_array_equal(u.indices, [int((q + 0.5) * 97 / 10) for q in range(10)])


def test_avs_fewer_shots_than_k_fills_within_shots():
  s = np.zeros(100, np.float32)
  s[[40, 70]] = [0.9, 0.8]  # shots: [0,40) no cut at its start, [40,70), [70,100)
  sel = S.sample("avs", 10, num_frames=100, scores=s)
  idx = sel.indices.tolist()
  assert 40 in idx and 70 in idx  # every cut kept
  per_shot = [sum(a <= i < b for i in idx) for a, b in [(0, 40), (40, 70), (70, 100)]]
  assert per_shot == [4, 3, 3]  # proportional to length 40:30:30
  # within an anchored shot the picks are evenly spaced from the cut
  assert [i for i in idx if 40 <= i < 70] == [40, 50, 60]
  assert [i for i in idx if i < 40] == [5, 15, 25, 35]


def test_avs_short_shots_get_at_most_their_length():
  s = np.zeros(50, np.float32)
  s[[10, 11]] = [0.9, 0.0]
  s[[12]] = 0.95  # NMS (w=1) keeps 10 and 12: shot [10,12) has 2 frames
  sel = S.sample("avs", 30, num_frames=50, scores=s, window=1)
  idx = sel.indices.tolist()
  assert sum(10 <= i < 12 for i in idx) <= 2 and len(set(idx)) == 30


def test_avs_fewer_frames_than_k():
  sel = S.sample("avs", 8, num_frames=5, scores=np.ones(5))
  assert sel.indices.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
  assert sel.valid.tolist() == [True] * 5 + [False] * 3


def test_avs_jittable_with_static_k():
  s = np.random.default_rng(1).random(300).astype(np.float32)
  f = jax.jit(S.avs_select, static_argnums=(1, 2))
  i1, _ = f(s, 16, 4)
  i2, _ = S.avs_select(s, 16, 4)
  np.testing.assert_array_equal(i1, i2)
  # traced k/window-static function also handles the fill regime (few peaks) under jit
  sparse = np.where(s > 0.995, s, 0.0).astype(np.float32)
  np.testing.assert_array_equal(f(sparse, 16, 4)[0], S.avs_select(sparse, 16, 4)[0])


def test_multirate_clips():
  sel = S.sample("multirate", 96, num_frames=3000, rate=3)
  idx = sel.indices
  clips = idx.reshape(32, 3)
  assert (np.diff(clips, axis=1) == 1).all()  # 3 consecutive frames per clip
  centres = clips[:, 1]
  np.testing.assert_array_equal(centres, [int((c + 0.5) * 3000 / 32) for c in range(32)])
  with pytest.raises(ValueError, match="multiple of rate"):
    S.sample("multirate", 10, num_frames=100, rate=3)


def _two_scene_features(t=60, d=8, switch=(20, 45)):
  rng = np.random.default_rng(0)
  base = rng.standard_normal((3, d))
  f = np.zeros((t, d), np.float32)
  bounds = [0, *switch, t]
  for j in range(3):
    n = bounds[j + 1] - bounds[j]
    f[bounds[j]:bounds[j + 1]] = base[j] + 0.05 * rng.standard_normal((n, d))
  return f


def test_fila_covers_every_scene():
  f = _two_scene_features()
  sel = S.sample("fila", 9, num_frames=60, features=f, r=2)
  idx = sel.indices
  assert [((a <= idx) & (idx < b)).sum() for a, b in [(0, 20), (20, 45), (45, 60)]] == [3, 3, 3]
  labels, _ = S.kmeans(f, 3)
  assert len(set(labels[:20])) == len(set(labels[20:45])) == len(set(labels[45:])) == 1


def test_longvu_drops_redundant_frames():
  rng = np.random.default_rng(0)
  static = np.tile(rng.standard_normal(16), (32, 1)).astype(np.float32)  # 2 windows, no motion
  moving = rng.standard_normal((16, 16)).astype(np.float32)  # 1 window, all distinct
  f = np.concatenate([static, moving])
  lv = S.LongVUSampler()
  red = lv.redundancy(f)
  assert (red[:32] > 0.99).all() and (red[32:] < 0.83).all()
  sel = lv(16, num_frames=48, features=f)
  assert sel.indices.tolist() == list(range(32, 48))  # exactly the non-redundant window
  # budget larger than the survivors: topped up, still unique and sorted
  sel = lv(20, num_frames=48, features=f)
  assert set(range(32, 48)) <= set(sel.indices.tolist()) and len(set(sel.indices.tolist())) == 20


ALL = {
    "avs": lambda t, rng: {"scores": rng.random(t).astype(np.float32)},
    "uniform": lambda t, rng: {},
    "multirate": lambda t, rng: {},
    "fila": lambda t, rng: {"features": rng.standard_normal((t, 6)).astype(np.float32)},
    "longvu": lambda t, rng: {"features": rng.standard_normal((t, 6)).astype(np.float32)},
}


def test_every_registered_sampler_is_covered():
  assert sorted(ALL) == S.SAMPLERS.names()


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("t,k", [(1, 3), (5, 6), (7, 6), (100, 12), (1000, 96), (13, 12)])
def test_invariants(name, t, k):
  rng = np.random.default_rng(t * 31 + k)
  sel = S.sample(name, k, num_frames=t, **ALL[name](t, rng))
  idx, valid = sel.indices, sel.valid
  assert idx.shape == (k,) and valid.shape == (k,) and idx.dtype == np.int32
  assert valid.sum() == min(k, t)
  assert (idx >= 0).all() and (idx < t).all()
  v = idx[valid]
  assert (np.diff(v) > 0).all()  # sorted and unique
  assert (np.diff(idx) >= 0).all()  # padding repeats the last frame, still sorted


def test_bad_inputs():
  with pytest.raises(ValueError, match="budget"):
    S.sample("uniform", 0, num_frames=10)
  with pytest.raises(ValueError, match="scores"):
    S.sample("avs", 3, num_frames=10)
  with pytest.raises(ValueError, match="10 frames"):
    S.sample("avs", 3, num_frames=10, scores=np.zeros(9))
  with pytest.raises(KeyError, match="choose one of"):
    S.sample("nope", 3, num_frames=10)


def test_sample_command_uniform_json(tmp_path, capsys):
  from longvid_jax.evaluate import shot_commands as commands
  grey = np.broadcast_to(np.arange(30, dtype=np.uint8)[:, None, None, None] * 8, (30, 32, 32, 3))
  path = encode_mp4(tmp_path / "c.mp4", grey, fps=10)
  ap = argparse.ArgumentParser()
  commands.register(ap.add_subparsers())
  args = ap.parse_args(["sample", str(path), "--k", "4", "--method", "uniform", "--json"])
  assert args.func(args) == 0
  got = json.loads(capsys.readouterr().out)
  assert got["indices"] == [3, 11, 18, 26]
  np.testing.assert_allclose(got["timestamps"], np.asarray(got["indices"]) / 10.0, atol=1e-6)
  args = ap.parse_args(["sample", str(tmp_path / "missing.mp4"), "--k", "4", "--method", "uniform"])
  assert args.func(args) == 2
  assert "missing.mp4" in capsys.readouterr().err
