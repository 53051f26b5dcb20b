"""Grain pipeline: synthetic batches unchanged, manifest source end to end, resumable iterator
state, multi-host row split."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import grain
import ml_collections
import numpy as np
import pytest
from test_video import _write_mp4

from longvid_jax import config as config_lib
from longvid_jax.data import clips, descriptors, pipeline, records, shots, video
from longvid_jax.sampling.transnetv2 import ShotPredictions


class CharTok:
  """One id per character, so decoded prompts can be read back in assertions."""
  video_token_id = 1000
  pad_id = 0

  def encode(self, text):
    return [ord(c) for c in text]

  def apply_chat_template(self, messages, add_generation_prompt):
    s = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
    return s + ("<assistant>" if add_generation_prompt else "")


def text_of(ids, mask=None):
  ids = ids if mask is None else ids[mask == 1]
  return "".join(chr(i) if i < 1000 else "#" for i in ids if i)


def synthetic_cfg():
  return config_lib.data(
      source="synthetic", num_videos=40, heldout_fraction=0.1, seed=0, shots_per_video=2,
      frames_per_shot=4, num_frames=4, image_size=16, seq_len=160)


def test_synthetic_batches_unchanged():
  """The synthetic source still yields what the original chain of Grain calls yields."""
  cfg, tok = synthetic_cfg(), CharTok()
  ds = pipeline.dataset(cfg, "mix", tok, 4, 3, seed=5)
  ref = grain.MapDataset.source(pipeline.split_ids(cfg, "train")).shuffle(seed=5).repeat(None)
  ref = ref.random_map(lambda v, rng: pipeline.example(cfg, "mix", tok, 4, v, rng), seed=5)
  ref = ref.batch(3, drop_remainder=True)
  for i in (0, 1, 17):
    for k in ("frames", "input_ids", "loss_mask"):
      np.testing.assert_array_equal(ds[i][k], ref[i][k])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Four tiny videos (different lengths) and a manifest over them."""
  root = tmp_path_factory.mktemp("corpus")
  recs = []
  for j, n in enumerate((12, 20, 9, 16)):
    _write_mp4(root / f"v{j}.mp4", n=n, fps=10, w=32, h=24, gop=4, bframes=1)
    recs.append(records.Record(id=f"r{j}", video=f"v{j}.mp4",
                               turns=((f"What is in clip {j}?", f"thing {j}"),)))
  recs.append(records.Record(id="mc", video="v1.mp4", turns=(("Which bar?", "left"),),
                             options=("right", "left"), answer_index=1, start=0.5, end=1.5))
  records.write_manifest(root / "train.jsonl", recs)
  return root


def manifest_cfg(root, **kw):
  return config_lib.data(
      source="manifest", manifest=str(root / "{split}.jsonl"), num_frames=4, image_size=16,
      seq_len=256, **kw)


def test_manifest_examples(corpus):
  cfg, tok = manifest_cfg(corpus, timestamps=True), CharTok()
  ds = pipeline.dataset(cfg, "qa", tok, 4, 5, seed=0)
  b = ds[0]
  assert b["frames"].shape == (5, 4, 16, 16, 3) and b["frames"].dtype == np.float32
  assert 0 <= b["frames"].min() and b["frames"].max() <= 1
  for k in ("input_ids", "attention_mask", "loss_mask"):
    assert b[k].shape == (5, 256) and b[k].dtype == np.int32
  assert (b["input_ids"] == tok.video_token_id).sum(1).tolist() == [4] * 5
  prompts = [text_of(r) for r in b["input_ids"]]
  answers = {text_of(r, m) for r, m in zip(b["input_ids"], b["loss_mask"])}
  assert answers == {"thing 0</>", "thing 1</>", "thing 2</>", "thing 3</>", "B</>"}
  mc = next(p for p in prompts if "Which bar?" in p)
  assert "A. right\nB. left\nAnswer with the option's letter" in mc
  # the clip [0.5, 1.5) s of v1 at 10 fps: frames 5..14, uniform centres 6, 8, 11, 13
  assert ("This video samples 4 frames of a 1.0-second video at 00:00.1, 00:00.3, 00:00.6, "
          "00:00.8.") in mc
  want = video.read_frames(corpus / "v1.mp4", [6, 8, 11, 13], size=(16, 16)).frames
  row = prompts.index(mc)
  np.testing.assert_allclose(b["frames"][row], want / 255.0, atol=1e-7)
  # a 9-frame video with k=4 and uniform sampling: centres of 4 segments
  row = next(i for i, p in enumerate(prompts) if "clip 2" in p)
  want = video.read_frames(corpus / "v2.mp4", [1, 3, 5, 7], size=(16, 16)).frames
  np.testing.assert_allclose(b["frames"][row], want / 255.0, atol=1e-7)



def test_system_prompt_replaces_the_default_turn_in_both_sources(corpus):
  """`data.system_prompt` is the first turn of every example; None leaves the template alone."""
  sys_turn = "<system>Be brief.</>"
  for cfg in (synthetic_cfg(), manifest_cfg(corpus)):
    for system, want in ((None, False), ("Be brief.", True)):
      cfg.system_prompt = system
      b = pipeline.dataset(cfg, "qa", CharTok(), 4, 2, seed=0)[0]
      texts = [text_of(r) for r in b["input_ids"]]
      assert all(t.startswith(sys_turn) == want for t in texts), texts
      answers = [text_of(r, m) for r, m in zip(b["input_ids"], b["loss_mask"])]
      assert not any("Be brief" in a for a in answers)
  with pytest.raises(ValueError, match="data.system_prompt"):
    from longvid_jax import config as config_lib
    c = config_lib.load(str(pathlib.Path(__file__).parents[1] / "experiments" / "paper.py"))
    c.data.system_prompt = 3  # the full recipe leaves it None, so any type can be set
    config_lib.validate(c)

def test_qa_turns_pack_several_answers_per_example(corpus, tmp_path):
  """data.qa_turns: the synthetic source asks distinct questions of one video, a manifest record
  contributes its first turns in order; multiple choice stays lettered in the first turn."""
  cfg, tok = synthetic_cfg(), CharTok()
  cfg.update(qa_turns=3, seq_len=256)
  b = pipeline.dataset(cfg, "qa", tok, 4, 4, seed=0)[0]
  for ids, loss in zip(b["input_ids"], b["loss_mask"]):
    assert (ids == tok.video_token_id).sum() == 4  # one video prefix for all three turns
    assert text_of(ids, loss).count("</>") == 3
    asked = [t.split("</>")[0] for t in text_of(ids).split("<user>")[1:]]
    assert len(set(asked)) == 3, asked

  recs = [records.Record(id="talk", video="v0.mp4", turns=(("First?", "one"), ("Then?", "two"),
                                                           ("Last?", "three"))),
          records.Record(id="mc", video="v1.mp4", turns=(("Which bar?", "left"), ("Why?", "tall")),
                         options=("right", "left"), answer_index=1)]
  records.write_manifest(tmp_path / "train.jsonl", [dataclasses.replace(
      r, video=str(corpus / r.video)) for r in recs])
  mcfg = manifest_cfg(tmp_path, qa_turns=2)
  src = pipeline.ManifestSource(mcfg, "train", "qa", tok, 4)
  rng = np.random.default_rng(0)
  talk, mc = (src.example(i, rng) for i in range(2))
  assert text_of(talk["input_ids"], talk["loss_mask"]) == "one</>two</>"
  assert text_of(mc["input_ids"], mc["loss_mask"]) == "B</>tall</>"
  assert "A. right\nB. left" in text_of(mc["input_ids"])
  mcfg.qa_turns = 1
  one = pipeline.ManifestSource(mcfg, "train", "qa", tok, 4).example(0, rng)
  assert text_of(one["input_ids"], one["loss_mask"]) == "one</>"

  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load(str(pathlib.Path(__file__).parents[1] / "configs" / "demo.py"))
  for bad in (0, -2):
    c.data.qa_turns = bad
    with pytest.raises(ValueError, match="data.qa_turns"):
      config_lib.validate(c)


def test_manifest_text_choices_captions_and_target_index(corpus, tmp_path):
  """data.choices="text" trains a multiple-choice record as its bare question answered by the
  option's text; `meta.caption` is what the caption task trains on (records without one fall
  back to their questions); data.max_targets lists the target positions."""
  tok = CharTok()
  recs = [records.Record(id="mc", video=str(corpus / "v1.mp4"), turns=(("Which bar?", "left"),),
                         options=("right", "left"), answer_index=1,
                         meta={"caption": "Two bars, the left one tall."}),
          records.Record(id="plain", video=str(corpus / "v0.mp4"), turns=(("Colour?", "red"),))]
  records.write_manifest(tmp_path / "train.jsonl", recs)
  cfg = manifest_cfg(tmp_path, choices="text", max_targets=40)
  rng = np.random.default_rng(0)
  qa = pipeline.ManifestSource(cfg, "train", "qa", tok, 4).example(0, rng)
  assert text_of(qa["input_ids"], qa["loss_mask"]) == "left</>"
  assert "A. right" not in text_of(qa["input_ids"]) and "Which bar?" in text_of(qa["input_ids"])
  listed = qa["target_index"][qa["target_index"] > 0]
  assert listed.tolist() == np.flatnonzero(qa["loss_mask"]).tolist()
  cap = pipeline.ManifestSource(cfg, "train", "caption", tok, 4)
  ex = cap.example(0, rng)
  assert text_of(ex["input_ids"], ex["loss_mask"]) == "Two bars, the left one tall.</>"
  assert text_of(cap.example(1, rng)["input_ids"], cap.example(1, rng)["loss_mask"]) == "red</>"
  cfg.max_targets = 8  # the caption has more target tokens: a counted skip, named
  with pytest.raises(records.RecordError, match="data.max_targets is 8"):
    pipeline.ManifestSource(cfg, "train", "caption", tok, 4).example(0, rng)


def test_merged_questions_share_one_video_prefix(corpus, tmp_path):
  """data.merge_questions: one video's records become one example whose turns are drawn from all
  their questions (phrased as data.choices says); another video stays its own example."""
  tok = CharTok()
  v1, v0 = str(corpus / "v1.mp4"), str(corpus / "v0.mp4")
  recs = [records.Record(id=f"q{i}", video=v1, turns=((f"Q{i}?", f"a{i}"),),
                         options=(f"a{i}", "zz"), answer_index=0, meta={"caption": "c"})
          for i in range(3)]
  recs.append(records.Record(id="other", video=v0, turns=(("Other?", "yes"),)))
  records.write_manifest(tmp_path / "train.jsonl", recs)
  cfg = manifest_cfg(tmp_path, choices="text", merge_questions=True, qa_turns=2)
  src = pipeline.ManifestSource(cfg, "train", "qa", tok, 4)
  assert len(src.records) == 2 and len(src) == 2
  seen = set()
  for seed in range(12):
    ex = src.example(0, np.random.default_rng(seed))
    text = text_of(ex["input_ids"])
    asked = sorted((text.index(f"Q{i}?"), i) for i in range(3) if f"Q{i}?" in text)
    asked = [i for _, i in asked]  # in the order they are asked
    assert len(asked) == 2 and text.count("#") == 4  # two of the three, one video prefix
    assert text_of(ex["input_ids"], ex["loss_mask"]) == "".join(f"a{i}</>" for i in asked)
    seen.add(tuple(asked))
  assert len(seen) > 2  # the draw varies: not always the first two
  assert text_of(src.example(1, np.random.default_rng(0))["input_ids"], None).count("Other?") == 1
  cfg.choices = "letters"  # lettered questions answered by the letter
  ex = pipeline.ManifestSource(cfg, "train", "qa", tok, 4).example(0, np.random.default_rng(0))
  assert text_of(ex["input_ids"], ex["loss_mask"]) == "A</>A</>"


def test_merged_turns_are_drawn_evenly_across_tasks(corpus, tmp_path):
  """A video asked many grounding questions and one needle question: with as many turns as
  tasks, every example asks each task once, whichever of its questions."""
  tok = CharTok()
  v1 = str(corpus / "v1.mp4")
  kinds = ["grounding"] * 6 + ["needle"] + ["ordering"] * 2
  recs = [records.Record(id=f"q{i}", video=v1, turns=((f"Q{i}?", f"a{i}"),), task=k)
          for i, k in enumerate(kinds)]
  records.write_manifest(tmp_path / "train.jsonl", recs)
  cfg = manifest_cfg(tmp_path, choices="text", merge_questions=True, qa_turns=3)
  src = pipeline.ManifestSource(cfg, "train", "qa", tok, 4)
  assert src.records[0].meta["turn_tasks"] == kinds
  grounding = set()
  for seed in range(20):
    text = text_of(src.example(0, np.random.default_rng(seed))["input_ids"])
    asked = [i for i in range(len(kinds)) if f"Q{i}?" in text]
    assert sorted(kinds[i] for i in asked) == ["grounding", "needle", "ordering"], asked
    grounding |= {i for i in asked if kinds[i] == "grounding"}
  assert len(grounding) > 3  # which grounding question varies


def test_reconstruction_batches_have_frames_only(corpus):
  b = pipeline.dataset(manifest_cfg(corpus), "reconstruction", CharTok(), 4, 2, seed=1)[3]
  assert set(b) == {"frames", "record_id"} and b["frames"].shape == (2, 4, 16, 16, 3)


def test_batches_carry_their_record_ids(corpus):
  """Host-side ids name each row's record: the manifest's id, or the synthetic video."""
  ds = pipeline.dataset(manifest_cfg(corpus), "qa", CharTok(), 4, 5, seed=2)
  ids = ds[0]["record_id"].tolist()
  assert sorted(ids) == ["mc", "r0", "r1", "r2", "r3"]  # one epoch of five records, shuffled
  cfg = synthetic_cfg()
  ds = pipeline.dataset(cfg, "reconstruction", None, 0, 3, seed=5)
  want = grain.MapDataset.source(pipeline.split_ids(cfg, "train")).shuffle(seed=5)
  assert ds[1]["record_id"].tolist() == [f"synthetic:0:{want[i]}" for i in (3, 4, 5)]


def test_scores_drive_the_adaptive_sampler(corpus, tmp_path):
  """Precomputed boundary scores are used (no detector), cuts in dropped frames still count."""
  scores = np.zeros(20, np.float32)
  scores[[4, 12]] = 0.9  # shots start at frames 5 and 13
  np.save(tmp_path / "s.npy", scores)
  rec = records.Record(id="s", video=str(corpus / "v1.mp4"), scores=str(tmp_path / "s.npy"))
  cfg = manifest_cfg(corpus, sampler="avs", sampler_args={"window": 2})
  clip = clips.load_clip(rec, cfg)
  assert {5, 13} <= set(clip.indices.tolist())
  cfg.fps = 5.0  # keeps even frames only; the cut at 5 moves to the next kept frame, 6
  clip = clips.load_clip(rec, cfg)
  assert {6, 14} <= set(clip.indices.tolist()) and all(i % 2 == 0 for i in clip.indices)


def test_detector_runs_once_per_video_and_only_when_needed(corpus, monkeypatch, tmp_path):
  """Scores are computed for samplers that need them, once per video (a content sampler never
  runs the detector); a fresh process (the in-memory detector dropped) reads them from the
  on-disk shot cache."""
  calls = []

  class FakeDetector:
    def predict_chunks(self, chunks, progress=None):
      n = sum(len(c) for c in chunks)
      calls.append(n)
      single = np.zeros(n, np.float32)
      single[9] = 1.0
      return ShotPredictions(single, single, np.eye(n, 8, dtype=np.float32))

  monkeypatch.setenv("LONGVID_CACHE", str(tmp_path))
  monkeypatch.setattr(shots, "detector", lambda *a, **k: FakeDetector())
  rec = records.Record(id="d", video=str(corpus / "v1.mp4"))
  clips.load_clip(rec, manifest_cfg(corpus))
  assert calls == []
  clip = clips.load_clip(rec, manifest_cfg(corpus, sampler="avs"))
  assert calls == [20] and 10 in clip.indices
  by_colour = descriptors.Describer(lambda x: x.mean(axis=(1, 2)), "mean-colour", 16)
  assert clips.load_clip(rec, manifest_cfg(corpus, sampler="longvu"), by_colour).valid.all()
  assert calls == [20] and len(list((tmp_path / "shots").glob("*.npz"))) == 1
  pred = shots.predict(rec.video)
  assert calls == [20] and pred.single[9] == 1.0 and pred.timestamps.shape == (20,)


def test_iterator_state_round_trip(corpus):
  ds = pipeline.dataset(manifest_cfg(corpus), "mix", CharTok(), 4, 2, seed=3)
  it = pipeline.iterate(ds, 0)
  [next(it) for _ in range(3)]
  state = json.dumps(it.get_state())
  want = [next(it) for _ in range(3)]
  it.close()
  again = pipeline.iterate(ds, 0)  # a new run restores the checkpointed state
  assert isinstance(again, grain.DatasetIterator)
  again.set_state(json.loads(state))
  got = [next(again) for _ in range(3)]
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
  assert again.get_state() == {"next_batch": 6}
  # and the uninterrupted sequence is batch 3, 4, 5 of the dataset
  np.testing.assert_array_equal(want[0]["input_ids"], ds[3]["input_ids"])
  again.close()


def test_same_seed_same_batches_other_seed_differs(corpus):
  a = pipeline.dataset(manifest_cfg(corpus), "qa", CharTok(), 4, 2, seed=7)
  b = pipeline.dataset(manifest_cfg(corpus), "qa", CharTok(), 4, 2, seed=7)
  c = pipeline.dataset(manifest_cfg(corpus), "qa", CharTok(), 4, 2, seed=8)
  ids = lambda d: np.concatenate([d[i]["input_ids"] for i in range(4)])  # noqa: E731
  np.testing.assert_array_equal(ids(a), ids(b))
  assert not np.array_equal(ids(a), ids(c))


@pytest.mark.parametrize("source", ["synthetic", "manifest"])
def test_multi_host_rows(corpus, source):
  cfg = synthetic_cfg() if source == "synthetic" else manifest_cfg(corpus)
  whole = pipeline.dataset(cfg, "qa", CharTok(), 4, 4, seed=2)
  parts = [pipeline.dataset(cfg, "qa", CharTok(), 4, 4, seed=2, process_index=p,
                            process_count=2) for p in range(2)]
  for i in (0, 1, 5):
    for k in ("frames", "input_ids"):
      np.testing.assert_array_equal(np.concatenate([p[i][k] for p in parts]), whole[i][k])
  with pytest.raises(ValueError, match="divide"):
    pipeline.dataset(cfg, "qa", CharTok(), 4, 3, seed=2, process_index=0, process_count=2)


def test_worker_processes_give_the_same_batches(corpus):
  cfg = manifest_cfg(corpus, workers=1)
  ds = pipeline.dataset(cfg, "reconstruction", CharTok(), 4, 2, seed=0)
  it = pipeline.iterate(ds, 2)
  got = [next(it) for _ in range(2)]
  it.close()
  for i, g in enumerate(got):
    np.testing.assert_array_equal(g["frames"], ds[2 + i]["frames"])


def test_manifest_paths(corpus, tmp_path):
  cfg = manifest_cfg(corpus)
  assert pipeline.manifest_paths(cfg, "val") == [str(corpus / "val.jsonl")]
  per_split = ml_collections.ConfigDict({"manifest": {"train": "a.jsonl"}})
  assert pipeline.manifest_paths(per_split, "train") == ["a.jsonl"]
  with pytest.raises(ValueError, match="no 'val' entry"):
    pipeline.manifest_paths(per_split, "val")
  for n in range(2):
    (tmp_path / f"part-{n}.jsonl").write_text("")
  cfg.manifest = str(tmp_path / "part-*.jsonl")
  assert [p[-12:] for p in pipeline.manifest_paths(cfg, "train")] == ["part-0.jsonl",
                                                                      "part-1.jsonl"]


def test_synthetic_source_samples_with_data_sampler():
  """AVS on synthetic videos: the generator's cuts are the scores, so the first frame of every
  shot after a cut is kept and each shot gets its share; uniform keeps its segment centres
  (what the synthetic source always took)."""
  cfg = config_lib.data(source="synthetic", num_videos=20, heldout_fraction=0.1, seed=3,
                        shots_per_video=4, frames_per_shot=12, num_frames=8, image_size=16,
                        sampler="avs")
  for vid in range(5):
    spec = pipeline.video_spec(cfg, vid)
    idx = pipeline.synthetic_frames(cfg, spec)
    assert len(idx) == 8 and np.all(np.diff(idx) > 0)
    assert {12, 24, 36} <= set(idx.tolist()), idx
    assert np.bincount(idx // 12, minlength=4).tolist() == [2, 2, 2, 2]
  cfg.sampler = "uniform"
  idx = pipeline.synthetic_frames(cfg, pipeline.video_spec(cfg, 0))
  np.testing.assert_array_equal(idx, ((np.arange(8) + 0.5) * 48 / 8).astype(int))


def test_exported_synthetic_videos_sample_the_frames_training_took(tmp_path):
  """`make-benchmark --from-config` writes the cut scores beside each video, so `ask`/`eval`
  (clips.load_clip on the decoded mp4) keep exactly the frames the synthetic source trained on."""
  from longvid_jax.data import longvideo
  from longvid_jax.evaluate.predictor import Predictor
  cfg = config_lib.data(source="synthetic", num_videos=20, heldout_fraction=0.1, seed=3,
                        shots_per_video=4, frames_per_shot=12, num_frames=8, image_size=32,
                        sampler="avs", sampler_args={"window": 3})
  manifest = longvideo.export_synthetic(cfg, "test", tmp_path)
  recs = [r for _, r in records.read_manifest(manifest)]
  assert recs and all(r.scores and pathlib.Path(r.scores).exists() for r in recs)
  for r in recs[::4]:  # one question per video
    vid = int(r.id.split("/")[0].rsplit("_", 1)[1])
    want = pipeline.synthetic_frames(cfg, pipeline.video_spec(cfg, vid))
    got = clips.load_clip(r, cfg)
    np.testing.assert_array_equal(got.indices, want)
    assert got.valid.all()
  del Predictor  # Predictor.clip is clips.load_clip with the run's data block (test_eval)


def test_frame_times_read_like_the_benchmarks_moments():
  """Frame times are mm:ss.d, so "what is shown at 00:38" meets digits of its own form."""
  from longvid_jax.data import longvideo, prompts
  assert [prompts.clock(t) for t in (0.0, 7.0, 37.54, 65.0, 600.0)] == \
      ["00:00.0", "00:07.0", "00:37.5", "01:05.0", "10:00.0"]
  for t in (0.0, 38.0, 61.0, 599.0):  # a whole second reads as the benchmark's question says
    assert prompts.clock(t).startswith(longvideo.mmss(t))
