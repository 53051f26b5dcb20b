"""The content samplers (fila, longvu) choose frames by the run's own vision encoder: its tokens
mean-pooled over space, computed once per video and cached, in training and in `ask`/`eval`."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.data import clips, descriptors, pipeline, records, synthetic
from longvid_jax.evaluate import shot_commands
from longvid_jax.evaluate.predictor import Predictor
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.sampling import samplers
from longvid_jax.train import runner
from test_pipeline import manifest_cfg  # pylint: disable=g-bad-import-order
from test_stage_data import RECIPE, _manifest  # pylint: disable=g-bad-import-order


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("LONGVID_CACHE", str(tmp_path / "cache"))


def test_describer_batches_pads_and_caches_by_video_frames_and_encoder(tmp_path):
  calls = []

  def embed(x):  # a NumPy "encoder": each frame's mean colour
    calls.append(x.shape[0])
    return x.mean(axis=(1, 2))

  frames = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 3), np.uint8)
  read = lambda idx: frames[idx]  # noqa: E731
  d = descriptors.Describer(embed, "enc-a", 5, batch=4)
  got = d({"video": "v"}, np.arange(7), read)
  np.testing.assert_allclose(got, frames.astype(np.float32).mean((1, 2)) / 255, atol=1e-6)
  assert calls == [4, 4]  # one fixed batch shape: the tail of 3 is padded, not a new program
  assert len(list(descriptors.cache_root().glob("*.npy"))) == 1
  np.testing.assert_array_equal(d({"video": "v"}, np.arange(7), read), got)
  assert calls == [4, 4]  # read back from disk
  f, = descriptors.cache_root().glob("*.npy")
  f.write_bytes(b"not an array")  # a damaged cache entry is encoded again, not trusted
  np.testing.assert_array_equal(d({"video": "v"}, np.arange(7), read), got)
  assert calls == [4, 4, 4, 4] and np.load(f).shape == (7, 3)
  d({"video": "v"}, np.arange(0, 7, 2), read)  # other frames
  descriptors.Describer(embed, "enc-b", 5, batch=4)({"video": "v"}, np.arange(7), read)
  assert calls == [4] * 7 and len(list(descriptors.cache_root().glob("*.npy"))) == 3


def test_clip_loader_refuses_content_samplers_without_the_runs_encoder(tmp_path):
  path = _manifest(tmp_path, "v", 1)
  rec = next(r for _, r in records.read_manifest(path))
  with pytest.raises(ValueError, match=r"sampler 'fila' picks frames by the run's vision features"):
    clips.load_clip(rec, manifest_cfg(tmp_path, sampler="fila"))
  c = config_lib.load(RECIPE)
  c.data.update(sampler="longvu", workers=2)
  with pytest.raises(ValueError, match=r"data\.sampler='longvu'.*set data\.workers=0"):
    config_lib.validate(c)


@pytest.fixture(scope="module")
def tiny():
  c = config_lib.load(RECIPE)
  c.data.update(sampler="fila", sampler_args={"r": 1})
  s = runs.setup(c)
  return c, s, s.init_params()


def _pooled(s, params, frames: np.ndarray) -> np.ndarray:
  """The reference: the model's own features of all frames at once, averaged in NumPy."""
  with s.scope():
    f = s.model.apply({"params": params}, frames[None].astype(np.float32) / 255.0,
                      method=VideoLLM.features)
  return np.asarray(jax.device_get(f), np.float64)[0].mean(axis=(1, 2))


def test_synthetic_training_frames_follow_the_encoders_features(tiny):
  c, s, params = tiny
  describe = s.describer(params, batch=8)  # 8 does not divide the video: a padded tail
  spec = pipeline.video_spec(c.data, 3)
  frames = synthetic.render(spec, int(c.data.image_size))
  ref = _pooled(s, params, frames)
  got = describe({"synthetic": repr(spec)}, np.arange(spec.num_frames),
                 lambda idx: frames[idx])
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)  # float32 encoder, batched vs whole
  want = samplers.sample("fila", int(c.data.num_frames), num_frames=len(frames), features=ref,
                         r=1)
  np.testing.assert_array_equal(pipeline.synthetic_frames(c.data, spec, describe), want.indices)
  ex = pipeline.example(c.data, "caption", s.tokenizer, s.num_visual, 3,
                        np.random.default_rng(0), describe)
  chosen = synthetic.render(spec, int(c.data.image_size), want.indices)
  np.testing.assert_array_equal(ex["frames"], chosen.astype(np.float32) / 255.0)


@pytest.mark.slow
def test_a_fila_run_trains_and_ask_picks_the_frames_training_took(tmp_path, capsys):
  """A stage on a manifest with sampler fila trains; the run's Predictor (what `ask` and `eval`
  use) picks the same frames of each video as the training pipeline did."""
  c = config_lib.load(RECIPE)
  path = _manifest(tmp_path, "v", 3)
  c.recipe = ("align",)
  c.stages.align.update(steps=2, checkpoint_every=2, seq_len=None)
  c.data.update(source="manifest", manifest=str(path), sampler="fila", sampler_args={"r": 1})
  seen = {}
  load = clips.load_clip

  def spy(rec, cfg, describe=None):
    clip = load(rec, cfg, describe)
    seen[rec.id] = clip.indices
    return clip

  import unittest.mock  # pylint: disable=g-import-not-at-top
  with unittest.mock.patch.object(clips, "load_clip", spy):
    summary = runner.run(c, tmp_path / "run")
  assert summary["stages"][0]["status"] == "done" and seen
  assert len(list(descriptors.cache_root().glob("*.npy"))) == len(seen)
  p = Predictor(tmp_path / "run")
  assert p.describe is not None
  for rec_id, idx in seen.items():
    video = tmp_path / f"{rec_id.replace('/', '')}.mp4"
    np.testing.assert_array_equal(p.clip(str(video)).indices, idx)
  assert len(list(descriptors.cache_root().glob("*.npy"))) == len(seen)  # ask read the cache
  # `longvid sample` with the run's encoder agrees too, and without a run says what it needs
  ap = argparse.ArgumentParser()
  shot_commands.register(ap.add_subparsers())
  rec_id, idx = next(iter(seen.items()))
  video = str(tmp_path / f"{rec_id.replace('/', '')}.mp4")
  args = ap.parse_args(["sample", video, "--k", "4", "--method", "fila", "--r", "1", "--json",
                        "--run", str(tmp_path / "run")])
  assert args.func(args) == 0
  assert json.loads(capsys.readouterr().out)["indices"] == idx.tolist()
  args = ap.parse_args(["sample", video, "--k", "4", "--method", "fila"])
  assert args.func(args) == 2 and "--run RUN" in capsys.readouterr().err
