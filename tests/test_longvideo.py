"""The long-video benchmark: deterministic, split by video, balanced, and answerable exactly
from the frames that hold the evidence (and only from them)."""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from longvid_jax import cli
from longvid_jax import config as config_lib
from longvid_jax.data import longvideo, pipeline, records, synthetic, video
from longvid_jax.evaluate import benchmark, oracle


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  # one length for all videos: the AVS program compiles once per length
  manifests = longvideo.make_benchmark(out, num_videos=10, seconds=60, fps=4, size=32, seed=3,
                                       log=lambda *_: None)
  return out, {s: [r for _, r in records.read_manifest(p)] for s, p in manifests.items()}


def test_same_seed_same_benchmark(bench, tmp_path):
  out, recs = bench
  again = longvideo.make_benchmark(tmp_path, num_videos=10, seconds=60, fps=4, size=32, seed=3,
                                   splits=("test",), log=lambda *_: None)
  first = (out / "test.jsonl").read_text().splitlines()
  assert [json.loads(x)["meta"] for x in first] == [
      json.loads(x)["meta"] for x in again["test"].read_text().splitlines()]
  name = recs["test"][0].video.rsplit("/", 1)[-1]
  assert (out / "videos" / name).read_bytes() == (tmp_path / "videos" / name).read_bytes()


def test_training_videos_can_be_asked_more_questions(bench):
  """`--train-question-sets 4`: each training video is asked every task again (other moments,
  pairs, shapes), never the same question twice; the first set asks what one set asks, the
  held-out splits are unchanged, and the videos are reused, not rendered again."""
  out, recs = bench
  mtime = (out / recs["train"][0].video).stat().st_mtime_ns
  more = longvideo.make_benchmark(out, num_videos=10, seconds=60, fps=4, size=32, seed=3,
                                  train_question_sets=4, log=lambda *_: None)
  got = {s: [r for _, r in records.read_manifest(p)] for s, p in more.items()}
  assert (out / recs["train"][0].video).stat().st_mtime_ns == mtime
  for split in ("val", "test"):
    assert [r.to_json() for r in got[split]] == [r.to_json() for r in recs[split]]
  first = [r for r in got["train"] if r.id.count("/") == 1]
  assert [(r.id, r.turns, set(r.options)) for r in first] == [
      (r.id, r.turns, set(r.options)) for r in recs["train"]]  # positions balance over all sets
  by_video = {}
  for r in got["train"]:
    by_video.setdefault(r.video, []).append(r)
    assert r.options[r.answer_index] == r.answer
  assert len({r.id for r in got["train"]}) == len(got["train"])
  for rs in by_video.values():
    questions = [r.question for r in rs]
    assert len(set(questions)) == len(questions)
    kinds = [r.task for r in rs]
    assert kinds.count("needle") == 1 and 2 <= kinds.count("grounding") <= 4
  assert len(got["train"]) > 2 * len(recs["train"])
  with pytest.raises(ValueError, match="train_question_sets=0"):
    longvideo.make_benchmark(out, num_videos=10, train_question_sets=0)


def test_splits_share_no_video_and_answers_are_balanced(bench):
  _, recs = bench
  videos = {s: {r.video for r in rs} for s, rs in recs.items()}
  assert len(videos["train"]) == 6 and len(videos["val"]) == len(videos["test"]) == 2
  assert not (videos["train"] & videos["val"]) and not (videos["train"] & videos["test"])
  assert not (videos["val"] & videos["test"])
  for r in recs["train"]:
    assert r.options[r.answer_index] == r.answer and len(set(r.options)) == len(r.options)
  for task in longvideo.QUESTION_KINDS:
    pos = [r.answer_index for r in recs["train"] if r.task == task]
    counts = np.bincount(pos, minlength=len(recs["train"][0].options if task != "ordering"
                                                else (0, 0)))
    assert counts.max() - counts.min() <= 1, (task, counts)


def test_video_matches_its_timeline(bench):
  out, recs = bench
  from longvid_jax.data.video import read_all
  r = recs["test"][0]
  frames = read_all(r.video).frames
  assert len(frames) == r.meta["num_frames"]
  for shot in r.meta["timeline"]:
    if shot["kind"] == "shapes":  # the background fills the corners of every frame of the shot
      a, b = shot["start_frame"], shot["end_frame"]
      corner = frames[a:b, :2, :2].reshape(-1, 3).mean(0)
      assert np.abs(corner - synthetic.BACKGROUNDS[shot["background"]]).max() < 12, shot


def test_needle_is_short_and_unique():
  for seed in range(20):
    v = longvideo.make_video(seed, seconds=120, fps=4, size=32)
    needle = [s for s in v.shots if s.role == "needle"]
    assert len(needle) == 1 and needle[0].frames <= 8 < v.num_frames // 20
    shapes = [s.shape for s in v.shots if s.kind == "shapes"]
    assert len(shapes) == len(set(shapes))


def test_oracle_is_exact_with_the_evidence_and_chance_without(bench):
  _, recs = bench
  allr = [r for rs in recs.values() for r in rs]
  for r in allr:
    frames = [a for a, _ in r.meta["evidence"]]
    assert oracle.oracle_choice(r, frames) == r.answer_index, r.id
  # only frames outside the evidence: the oracle guesses option 0, a balanced coin
  blind = [oracle.oracle_choice(r, [i for i in range(r.meta["num_frames"])
                                    if not any(a <= i < b for a, b in r.meta["evidence"])][:1])
           == r.answer_index for r in allr if r.task != "grounding"]
  assert np.mean(blind) < 0.5


def test_avs_finds_the_needle_uniform_misses_it(bench):
  _, recs = bench
  needle = [r for rs in recs.values() for r in rs if r.task == "needle"]
  acc = {}
  for s in ("uniform", "avs"):
    res = benchmark.evaluate(needle, benchmark.OracleAnswerer(s, 8, scores="truth"))
    acc[s] = res["summary"]
  assert acc["avs"]["accuracy"] == 1.0 and acc["avs"]["evidence_seen"] == 1.0
  assert acc["uniform"]["evidence_seen"] < 0.6


def test_prior_baseline_is_near_chance(bench):
  _, recs = bench
  prior = oracle.PriorBaseline(recs["train"])
  res = benchmark.evaluate(recs["val"] + recs["test"], lambda r: {"choice": prior.choice(r)})
  assert res["summary"]["accuracy"] < res["summary"]["chance"] + 0.25


def test_synthetic_videos_unchanged():
  """The training pipeline's videos are fixed by their seed; the extra shapes must not move
  them."""
  spec = synthetic.make_spec(7)
  assert [s.shape for s in spec.shots] == ["circle", "triangle", "square", "square"]
  digest = hashlib.sha256(synthetic.render(spec, 32).tobytes()).hexdigest()
  assert digest.startswith("de83873feeb2fe7b")
  assert synthetic.caption(spec).startswith("The video shows a orange circle on gray, then")


def test_no_answer_leaks_into_the_text():
  """On many videos, knowing the training answers' frequencies buys nothing: the option prior
  stays at chance on every task."""
  recs = {}
  for split, ids in (("train", range(0, 200)), ("test", range(200, 360))):
    balancer, recs[split] = longvideo._Balancer(), []
    for i in ids:
      rng = np.random.default_rng([0, i])
      v = longvideo.make_video(int(rng.integers(2**31)), 120, 4, 32)
      recs[split] += longvideo.video_records(v, str(i), "x.mp4", balancer, rng)
  prior = oracle.PriorBaseline(recs["train"])
  s = benchmark.evaluate(recs["test"], lambda r: {"choice": prior.choice(r)})["summary"]
  assert abs(s["accuracy"] - s["chance"]) < 0.05
  for task, d in s["tasks"].items():
    assert d["accuracy"] < d["chance"] + 0.12, (task, d)


def test_export_from_config_or_workdir_holds_the_held_out_videos(tmp_path):
  """`make-benchmark --from-config` takes a config file or a run's workdir (its config.json);
  either way the manifest holds only that config's test videos, rendered as that config says."""
  recipe = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")
  cfg = config_lib.load(recipe)
  cfg.data.update(shots_per_video=2, frames_per_shot=16)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(cfg.to_json())
  test_ids = set(pipeline.split_ids(cfg.data, "test").tolist())
  for source, data in ((recipe, config_lib.load(recipe).data), (workdir, cfg.data)):
    out = tmp_path / pathlib.Path(source).name
    assert cli.main(["make-benchmark", str(out), "--from-config", str(source), "--limit", "2"]) == 0
    recs = [r for _, r in records.read_manifest(out / "synthetic_test.jsonl")]
    assert {int(r.id.split("_")[-1].split("/")[0]) for r in recs} <= test_ids
    for r in recs:
      assert r.options[r.answer_index] == r.turns[0][1]
      vid = int(r.id.split("_")[-1].split("/")[0])
      assert r.meta["caption"] == synthetic.caption(pipeline.video_spec(data, vid))
      assert video.probe(out / r.video).num_frames == data.shots_per_video * data.frames_per_shot


def test_cut_scores_mark_every_cut_and_sample_like_the_timeline(tmp_path):
  """`--cut-scores train`: the train records carry the generator's cuts (1 on the last frame of
  every shot but the final one), so AVS picks each shot's first frame without a detector; the
  other splits carry none and get the detector's scores like any video."""
  assert cli.main(["make-benchmark", str(tmp_path), "--videos", "4", "--seconds", "20",
                   "--size", "32", "--heldout", "0.25", "--cut-scores", "train"]) == 0
  train = [r for _, r in records.read_manifest(tmp_path / "train.jsonl")]
  test = [r for _, r in records.read_manifest(tmp_path / "test.jsonl")]
  assert not any(r.scores for r in test)
  for r in train:
    single = np.load(r.scores)
    ends = [s["end_frame"] - 1 for s in r.meta["timeline"][:-1]]
    assert len(single) == r.meta["num_frames"] and np.flatnonzero(single).tolist() == ends
  cfg = config_lib.base().data
  cfg.update(sampler="avs", num_frames=8, image_size=32)
  from longvid_jax.data import clips  # pylint: disable=g-import-not-at-top
  for r in train[::5]:  # every shot gets a frame, the needle's first one included
    idx = clips.load_clip(r, cfg).indices
    shots = [(s["start_frame"], s["end_frame"], s["role"]) for s in r.meta["timeline"]]
    assert all(((a <= idx) & (idx < b)).any() for a, b, _ in shots), (shots, idx)
    assert next(a for a, _, role in shots if role == "needle") in idx


def test_precompute_scores_the_videos_without_cuts_once(tmp_path, capsys):
  """`longvid precompute RECIPE --manifest M`: TransNetV2 scores every video of M that has no
  `scores` into the detector's cache (a second call finds them cached), and with data.features
  the encoder features of every record."""
  from longvid_jax.data import shots  # pylint: disable=g-import-not-at-top
  assert cli.main(["make-benchmark", str(tmp_path / "b"), "--videos", "3", "--seconds", "12",
                   "--size", "32", "--heldout", "0.34", "--cut-scores", "train"]) == 0
  test = tmp_path / "b" / "test.jsonl"
  video_file = next(r for _, r in records.read_manifest(test)).video
  assert not shots._cache_file(video_file, None, "exact").exists()  # pylint: disable=protected-access
  recipe = str(pathlib.Path(__file__).parents[1] / "experiments" / "local.py")
  sets = ["--set", "data.image_size=32", "--set", "model.encoder.args.image_size=32",
          "--set", f"data.features={tmp_path / 'feats0'}"]
  assert cli.main(["precompute", recipe, "--manifest", str(test), *sets]) == 0
  out = capsys.readouterr().out
  assert "shot scores for 1 videos" in out and "1 videos, 48 frames" in out
  assert shots._cache_file(video_file, None, "exact").exists()  # pylint: disable=protected-access
  cached = shots._cache_file(video_file, None, "exact").stat().st_mtime_ns  # pylint: disable=protected-access
  # a missing video and an unreadable line are counted skips; the good video still counts
  bad = tmp_path / "bad.jsonl"
  bad.write_text(test.read_text() + '{"id": "gone", "video": "nowhere.mp4", "turns": [["Q?", '
                 '"a"]]}\n{not json\n')
  assert cli.main(["precompute", recipe, "--manifest", str(bad), *sets]) == 0
  out = capsys.readouterr()
  assert "shot scores for 2 videos" in out.out and "nowhere.mp4" in out.err
  assert "skipped: {'bad_manifest_line': 1, 'shots:" in out.out
  feats = tmp_path / "feats"
  assert cli.main(["precompute", recipe, "--manifest", str(test), "--manifest",
                   str(tmp_path / "b" / "train.jsonl"), *sets[:4],
                   "--set", f"data.features={feats}"]) == 0
  out = capsys.readouterr().out
  assert "shot scores for 1 videos" in out and "features: 2 written, 8 already cached" in out
  assert shots._cache_file(video_file, None, "exact").stat().st_mtime_ns == cached  # pylint: disable=protected-access


def test_grounding_names_a_second_inside_one_shot():
  """"What is shown at 00:37?" names [37 s, 38 s): every frame of that second lies in the asked
  shot, so no sampled frame of a neighbouring shot can fall in it (with a cut inside the second,
  two shots would answer it)."""
  fps, asked = 4, 0
  for seed in range(200):
    v = longvideo.make_video(seed, seconds=30, fps=fps, size=16)
    timeline = v.timeline()
    for q in longvideo.questions(v, np.random.default_rng(seed)):
      if q["task"] != "grounding":
        continue
      m, s = map(int, q["question"].rsplit(" ", 1)[1].rstrip("?").split(":"))
      second = 60 * m + s
      frames = range(second * fps, (second + 1) * fps)
      shown = {t["description"] for t in timeline for f in frames
               if t["start_frame"] <= f < t["end_frame"]}
      assert shown == {q["answer"]}, (seed, q["question"], shown)
      assert int(q["query"]["frame"] // fps) == second
      asked += 1
  assert asked == 200
