"""TransNetV2 in Flax against the PyTorch reference implementation, run here on the same frames."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from longvid_jax.assets import asset  # noqa: E402
from longvid_jax.data import video  # noqa: E402
from longvid_jax.interop import transnetv2 as conv  # noqa: E402
from longvid_jax.sampling import transnetv2 as tn  # noqa: E402
from test_video import encode_mp4  # noqa: E402  pylint: disable=g-bad-import-order

TOL = 1e-4  # max abs difference of probabilities (fp32 both sides; measured ~2e-7)


@pytest.fixture(scope="module")
def ref_module():
  # The reference imports only torch, numpy, tqdm and the standard library at module level
  # (ffmpeg is imported lazily inside predict_video, which we do not call).
  spec = importlib.util.spec_from_file_location("transnetv2_reference",
                                                asset("transnetv2_reference"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def ref_model(ref_module):
  torch.set_num_threads(2)
  return ref_module.TransNetV2(device="cpu")  # loads the weights that sit next to the .py


@pytest.fixture(scope="module")
def detector():
  return tn.ShotDetector(conv.load_params(), batch_windows=2)


@pytest.fixture(scope="module")
def clip_frames():
  return video.read_all(asset("cuts_video"), size=(48, 27)).frames


def test_conversion_roundtrip_is_exact():
  state = torch.load(asset("transnetv2_weights"), map_location="cpu", weights_only=True)
  params = conv.from_torch_state_dict(state)
  back = conv.to_torch_state_dict(params)
  want = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(back[k], want[k], err_msg=k)


def test_conversion_rejects_wrong_state_dict():
  state = torch.load(asset("transnetv2_weights"), map_location="cpu", weights_only=True)
  state = dict(state)
  state["fc1.weight"] = state["fc1.weight"][:, :10]
  with pytest.raises(ValueError, match="fc1"):
    conv.from_torch_state_dict(state)
  del state["fc1.weight"]
  state["extra.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match="extra.weight"):
    conv.from_torch_state_dict(state)


def test_released_weights_load_without_torch(monkeypatch):
  state = torch.load(asset("transnetv2_weights"), map_location="cpu", weights_only=True)
  want = conv.from_torch_state_dict(state)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  got = conv.load_params()
  flat_want = dict(conv.traverse_util.flatten_dict(want, sep="/"))
  flat_got = dict(conv.traverse_util.flatten_dict(got, sep="/"))
  assert sorted(flat_got) == sorted(flat_want)
  for k, v in flat_want.items():
    np.testing.assert_array_equal(flat_got[k], v, err_msg=k)


def _reference_windows(ref_model, frames):
  seen = []

  def fake(batch):
    seen.append(batch[0].numpy().copy())
    z = torch.zeros(1, batch.shape[1], 1)
    return z, z

  ref_model.predict_raw = fake
  try:
    ref_model.predict_frames(torch.from_numpy(frames), quiet=True)
  finally:
    del ref_model.predict_raw
  return seen


@pytest.mark.parametrize("n", [1, 49, 50, 51, 137])
def test_windows_match_reference_padding(ref_model, n):
  frames = np.random.default_rng(n).integers(0, 256, (n, 27, 48, 3), dtype=np.uint8)
  want = _reference_windows(ref_model, frames)
  cuts = [0, 3, 3, 40, n]  # irregular chunks, including an empty one
  chunks = [frames[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if a <= n]
  got = list(tn.windows(chunks))
  assert len(got) == len(want) == -(-n // 50)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_scene_rule_matches_reference(ref_module):
  rng = np.random.default_rng(0)
  cases = [np.zeros(10), np.ones(10), np.r_[1, 1, 0, 0, 1, 0], np.r_[0, 0, 1, 1], np.r_[0.7],
           rng.random(200), (rng.random(300) > 0.9).astype(float)]
  for p in cases:
    np.testing.assert_array_equal(tn.predictions_to_scenes(p, 0.5),
                                  ref_module.TransNetV2.predictions_to_scenes(p, 0.5))


def test_few_windows_match_reference(ref_model, detector, clip_frames):
  frames = clip_frames[:100]  # two windows, three cuts
  with torch.no_grad():
    s_ref, m_ref = ref_model.predict_frames(torch.from_numpy(frames), quiet=True)
  ours = detector.predict_frames(frames)
  assert ours.single.shape == ours.many.shape == (100,)
  assert np.abs(ours.single - s_ref.numpy()).max() < TOL
  assert np.abs(ours.many - m_ref.numpy()).max() < TOL
  assert ours.embeddings.shape == (100, 128)
  np.testing.assert_allclose(np.linalg.norm(ours.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_streamed_video_matches_reference(ref_model, clip_frames):
  """The clip's first 192 frames streamed in three 64-frame chunks against the reference on the
  same frames held in memory: four 100-frame windows at a hop of 50, two of them straddling a
  chunk edge (each window costs seconds on both sides). The whole clip (5301 frames, 109 scenes)
  takes ten minutes and lives in tools/bench_transnetv2.py."""
  assert clip_frames.shape == (5301, 27, 48, 3)
  chunk, n = 64, 192
  with torch.no_grad():
    s_ref, m_ref = ref_model.predict_frames(torch.from_numpy(clip_frames[:n]), quiet=True)
  chunks = itertools.islice(video.iter_frames(asset("cuts_video"), chunk, size=(48, 27)),
                            n // chunk)
  det = tn.ShotDetector(conv.load_params(), batch_windows=2)
  ours = det.predict_chunks(c.frames for c in chunks)
  s_ref, m_ref = s_ref.numpy(), m_ref.numpy()
  assert ours.single.shape == (n,)
  assert np.abs(ours.single - s_ref).max() < TOL
  assert np.abs(ours.many - m_ref).max() < TOL
  want = type(ref_model).predictions_to_scenes(s_ref, 0.5)
  got = ours.scenes(0.5)
  np.testing.assert_array_equal(got, want)
  assert len(got) > 3  # the clip cuts every few seconds


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory, clip_frames):
  src = video.read_frames(asset("cuts_video"), np.arange(40, 130), size=(96, 54)).frames
  return encode_mp4(tmp_path_factory.mktemp("tn") / "short.mp4", src, fps=25)


def _cli():
  from longvid_jax.evaluate import shot_commands as commands
  ap = argparse.ArgumentParser()
  commands.register(ap.add_subparsers())
  return ap


@pytest.mark.slow  # end-to-end: decode + detector through the CLI
def test_shots_command_matches_in_memory_prediction(short_mp4, detector, capsys):
  args = _cli().parse_args(["shots", str(short_mp4), "--json", "--batch-windows", "2"])
  assert args.func(args) == 0
  got = json.loads(capsys.readouterr().out)
  frames = video.read_all(short_mp4, size=(48, 27))
  want = detector.predict_frames(frames.frames)
  np.testing.assert_allclose(got["single"], want.single, atol=1e-6)
  np.testing.assert_allclose(got["timestamps"], frames.timestamps, atol=1e-6)
  assert got["scenes"] == want.scenes(0.5).tolist()
  assert len(got["scenes"]) >= 2  # the excerpt spans cuts


@pytest.mark.slow  # end-to-end: decode + detector + matplotlib
def test_sample_command_plot(short_mp4, tmp_path, capsys):
  png = tmp_path / "picks.png"
  args = _cli().parse_args(["sample", str(short_mp4), "--k", "8", "--json", "--plot", str(png),
                            "--batch-windows", "2"])
  assert args.func(args) == 0
  got = json.loads(capsys.readouterr().out)
  assert set(got) >= {"indices", "timestamps"} and len(got["indices"]) == 8
  assert got["indices"] == sorted(set(got["indices"]))
  np.testing.assert_allclose(got["timestamps"], np.asarray(got["indices"]) / 25.0, atol=1e-6)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bad_frames_rejected(detector):
  with pytest.raises(ValueError, match=r"\[T,27,48,3\]"):
    detector.predict_frames(np.zeros((10, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="empty"):
    detector.predict_chunks([])
