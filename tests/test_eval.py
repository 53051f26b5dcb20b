"""Inference and evaluation: checkpoint loading, log-likelihood ranking, generation with the KV
cache, answer parsing and the `longvid eval` / `longvid ask` commands, on a tiny random model."""

import json
import pathlib

import numpy as np
import pytest

from longvid_jax import cli
from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.data import longvideo, pipeline, prompts, records
from longvid_jax.evaluate import benchmark
from longvid_jax.evaluate.predictor import Predictor
from longvid_jax.train import checkpoint

TINY = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")


@pytest.mark.parametrize("text,want", [
    ("B", 1), ("(c) red", 0), ("C. blue", 2), ("red", 0), ("It is blue.", 2),
    ("a red circle on black", 3), ("green", None), ("red or blue", None), ("D", None)])
def test_parse_choice(text, want):
  options = ["red", "green light", "blue", "a red circle on black"]
  assert benchmark.parse_choice(text, options[:3] if text == "D" else options) == want


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir laid out like `longvid run` leaves it, holding freshly initialised params."""
  workdir = tmp_path_factory.mktemp("run")
  c = config_lib.load(TINY)
  params = runs.setup(c, mesh=runs.single_device_mesh()).init_params()
  checkpoint.save_params(workdir / "4_sft" / "params", params)
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
  (workdir / "summary.json").write_text(json.dumps(
      {"final_params": str(workdir / "4_sft" / "params"), "stages": []}))
  return workdir


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  return longvideo.make_benchmark(out, num_videos=3, seconds=30, fps=4, size=32, seed=1,
                                  splits=("test",), log=lambda *_: None)["test"]


def test_checkpoint_resolves_from_workdir_or_params(run_dir):
  run = runs.open_run(run_dir)
  assert (run.root, run.params_dir) == (run_dir, run_dir / "4_sft" / "params")
  assert runs.open_run(run_dir / "4_sft" / "params").root == run_dir
  with pytest.raises(FileNotFoundError):
    runs.open_run(run_dir / "nothing")


@pytest.mark.slow
def test_loglik_matches_the_training_loss(run_dir, manifest):
  """Ranking scores are the model's own log-probabilities: minus the summed LM loss of the
  same example, computed by the training objective."""
  from longvid_jax.data import prompts
  from longvid_jax.models.mllm import lm_loss
  p = Predictor(run_dir)
  r = next(r for _, r in records.read_manifest(manifest))
  clip = p.clip(r.video)
  assert clip.frames.shape == (p.k, 32, 32, 3) and clip.valid.all()
  feats = p.features(clip)
  scores = p.loglik(feats, r.question, r.options)
  assert scores.shape == (len(r.options),) and np.all(scores < 0)
  ex = prompts.encode_example(p.tok, r.question, r.options[1], p.num_visual, 96, system=p.system)
  with p._ctx():
    logits = p.model.apply({"params": p.params}, ex["input_ids"][None],
                           ex["attention_mask"][None], features=feats,
                           query_mask=ex["query_mask"][None])
  loss, _ = lm_loss(logits, ex["input_ids"][None], ex["loss_mask"][None])
  n = ex["loss_mask"][1:].sum()
  np.testing.assert_allclose(scores[1], -float(loss) * n, rtol=2e-4, atol=2e-4)
  cal = benchmark.evaluate([r], benchmark.ModelAnswerer(p, "calibrated"))["rows"][0]
  blank = p.loglik(p.features(clip, blank=True), r.question, r.options)
  np.testing.assert_allclose(cal["scores"], scores - blank, atol=1e-3)
  res = benchmark.evaluate([r], benchmark.ModelAnswerer(p, "generate", max_new_tokens=4))
  row = res["rows"][0]
  assert isinstance(row["reply"], str)
  assert row["choice"] == benchmark.parse_choice(row["reply"], r.options)


@pytest.mark.slow
def test_eval_and_ask_commands(run_dir, manifest, tmp_path, capsys):
  out = tmp_path / "res.json"
  assert cli.main(["eval", str(run_dir), str(manifest), "--limit", "4", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  s = res["summary"]
  assert s["n"] == 4 and s["visual_tokens_per_sample"] > 0 and 0 <= s["accuracy"] <= 1
  assert set(s["tasks"]) <= set(longvideo.QUESTION_KINDS)
  assert "| **all** | 4 |" in capsys.readouterr().out
  r = next(r for _, r in records.read_manifest(manifest))
  assert cli.main(["ask", str(run_dir), r.video, r.question, "--max-new-tokens", "3"]) == 0


def test_wilson_interval():
  z2 = 1.96 ** 2
  assert benchmark.wilson(0, 10)[0] == 0 and np.isclose(benchmark.wilson(0, 10)[1], z2 / (10 + z2))
  assert np.isclose(benchmark.wilson(10, 10)[0], 10 / (10 + z2))
  assert benchmark.wilson(10, 10)[1] == 1
  lo, hi = benchmark.wilson(30, 100)
  assert np.isclose(lo + hi, 2 * (0.3 + z2 / 200) / (1 + z2 / 100))  # centred off 0.3
  assert lo < 0.3 < hi and np.isclose(hi - lo, 2 * 1.96 * np.sqrt(
      0.3 * 0.7 / 100 + z2 / 40000) / (1 + z2 / 100))
  assert benchmark.wilson(0, 0) == (0.0, 1.0)
  rows = [{"task": "a", "correct": c, "num_options": 4, "chance": 0.25, "seconds": 0.1}
          for c in (True, False, False, False)]
  s = benchmark.summarise(rows)
  assert s["accuracy"] == s["chance"] == 0.25
  assert s["ci95"] == [round(b, 4) for b in benchmark.wilson(1, 4)]


@pytest.mark.slow
def test_batched_scoring_matches_one_question_at_a_time(run_dir, manifest):
  """Questions of one video share a batch (left-padded prompts of different lengths, option
  rows gathered from their prompt's cache): the same scores as scoring each alone."""
  p = Predictor(run_dir)
  recs = [r for _, r in records.read_manifest(manifest)]
  video = recs[0].video
  same = [r for r in recs if r.video == video][:4]
  questions = [(r.question, r.options) for r in same]
  questions.append(("A much longer question that pads every other prompt on the left, does "
                    "it change anything?", ("yes", "no", "it depends on the padding")))
  feats = p.features(p.clip(video))
  batched = p.loglik_many(feats, questions)
  assert len({len(p._targets(q, o, prompts.VIDEO)[0]) for q, o in questions}) > 1  # lengths differ
  for (q, opts), got in zip(questions, batched):
    np.testing.assert_allclose(got, p.loglik(feats, q, opts), rtol=1e-4, atol=1e-4)
  res = benchmark.evaluate(same, benchmark.ModelAnswerer(p, "loglik"))
  for r, row in zip(same, res["rows"]):
    np.testing.assert_allclose(row["scores"], p.loglik(feats, r.question, r.options), atol=1e-3)


@pytest.mark.slow
def test_eval_skips_bad_records_counts_them_and_reads_frame_folders(run_dir, manifest, tmp_path,
                                                                    capsys):
  """The training pipeline's policy: unreadable videos and manifest lines are counted skips by
  reason, in the table and the JSON; a frame folder is evaluated like the video it came from;
  --strict stops at the first bad record, naming it."""
  from PIL import Image
  from longvid_jax.data import video
  good = [r for _, r in records.read_manifest(manifest)][:2]
  folder = tmp_path / "frames"
  folder.mkdir()
  with video.open_video(good[0].video) as reader:
    n = reader.info.num_frames
    for i, f in enumerate(reader.read(np.arange(n)).frames):
      Image.fromarray(f).save(folder / f"{i:05d}.png")
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
  missing = str(tmp_path / "no.mp4")
  bad = [records.Record(**{**good[1].to_json(), "id": "missing", "video": missing}),
         records.Record(**{**good[1].to_json(), "id": "corrupt", "video": str(corrupt)})]
  folder_rec = records.Record(**{**good[0].to_json(), "id": "folder", "video": str(folder)})
  lines = [json.dumps(r.to_json()) for r in [*good, folder_rec, *bad]]
  m = tmp_path / "mixed.jsonl"
  m.write_bytes(("\n".join(lines[:3]) + "\n{not json\n").encode() + b"\xff\xfe bad bytes\n"
                + ("\n".join(lines[3:]) + "\n").encode())
  out = tmp_path / "res.json"
  assert cli.main(["eval", str(run_dir), str(m), "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["summary"]["n"] == 3  # two videos and the frame folder
  skipped = res["summary"]["skipped"]
  assert skipped["n"] == 4 and skipped["by_reason"]["bad_manifest_line"] == 2
  assert skipped["by_reason"]["missing_file"] == 1
  assert {s["record"].split("@")[0] for s in res["skipped"]} >= {"missing", "corrupt"}
  assert "skipped 4 records" in capsys.readouterr().out
  rows = {r["id"]: r for r in res["rows"]}
  assert rows["folder"]["frames"] == rows[good[0].id]["frames"]  # the same frames were sampled
  assert rows["folder"]["scores"] == pytest.approx(rows[good[0].id]["scores"], abs=1e-2)
  assert cli.main(["eval", str(run_dir), str(m), "--strict"]) == 2
  assert f"{m}:4" in capsys.readouterr().err  # the first bad thing: line 4
  m.write_text("\n".join(lines) + "\n")
  assert cli.main(["eval", str(run_dir), str(m), "--strict"]) == 2
  err = capsys.readouterr().err
  assert "'missing'" in err and "no.mp4" in err


@pytest.mark.slow
def test_eval_benchmark_agrees_with_ask_and_reports_rates(run_dir, manifest, capsys):
  """tools/bench_eval.py: batched eval and one-at-a-time ask give the same answers (the tool
  exits otherwise) and it prints both rates; the figures themselves are not asserted."""
  import bench_eval
  r = bench_eval.main([str(run_dir), str(manifest), "--questions", "4", "--command"])
  assert r["questions"] == 4 and r["eval_questions_per_s"] > 0 and r["ask_questions_per_s"] > 0
  assert r["command_cold_s"] > 0 and r["command_warm_s"] > 0
  assert "questions/s" in capsys.readouterr().out


def test_multiple_choice_is_scored_as_training_phrased_it(run_dir, manifest, tmp_path):
  """A run trained on the synthetic source ranks option texts after the bare question (what it
  trained on); one whose last stage read a manifest ranks the letters after the lettered
  question, and the scored row of the right answer is that record's training example."""
  import shutil  # pylint: disable=g-import-not-at-top
  r = next(r for _, r in records.read_manifest(manifest))
  p = Predictor(run_dir)
  assert p.choices(r.question, r.options) == (r.question, list(r.options))
  other = tmp_path / "run"
  shutil.copytree(run_dir, other)
  c = config_lib.from_json(other / "config.json")
  c.data.update(source="manifest", manifest=str(manifest))
  (other / "config.json").write_text(c.to_json_best_effort(indent=2))
  q = Predictor(other)
  prompt, targets = q.choices(r.question, r.options)
  assert (prompt, targets[r.answer_index]) == r.text() and targets[:2] == ["A", "B"]
  ids, rows = q._targets(prompt, targets, prompts.VIDEO)  # pylint: disable=protected-access
  ex = prompts.encode_conversation(q.tok, [r.text()], q.num_visual, 256, system=q.system)
  n = int(ex["attention_mask"].sum())
  want = ex["input_ids"][:n].tolist()
  assert ids + rows[r.answer_index].tolist() == want
  assert ex["loss_mask"][len(ids):n].all() and not ex["loss_mask"][:len(ids)].any()
  scores = q.loglik(q.features(q.clip(r.video)), prompt, targets)
  res = benchmark.evaluate([r], benchmark.ModelAnswerer(q, "loglik"))
  assert res["rows"][0]["choice"] == int(np.argmax(scores))
  # data.choices="text": the manifest trains and scores the bare question and option texts
  c.data.choices = "text"
  (other / "config.json").write_text(c.to_json_best_effort(indent=2))
  t = Predictor(other)
  prompt, targets = t.choices(r.question, r.options)
  assert (prompt, targets[r.answer_index]) == r.text(letters=False) == (r.question, r.answer)
  assert targets == list(r.options)
  assert pipeline._turns(r, "qa", c.data, np.random.default_rng(0)) == [  # pylint: disable=protected-access
      (r.question, r.answer)]


def _fresh_run(c, root: pathlib.Path) -> Predictor:
  """A finished run of config `c` under `root` holding freshly initialised params, opened."""
  config_lib.validate(c)
  s = runs.setup(c, mesh=runs.single_device_mesh())
  checkpoint.save_params(root / "4_sft" / "params", s.init_params())
  (root / "config.json").write_text(c.to_json_best_effort(indent=2))
  (root / "summary.json").write_text(json.dumps(
      {"final_params": str(root / "4_sft" / "params"), "stages": []}))
  return Predictor(root)


@pytest.mark.parametrize("question_first", [False, True])
def test_interleaved_frame_times_are_scored_as_trained(manifest, tmp_path, question_first):
  """With each frame's time before its tokens, the prompt eval scores is token for token the
  training example of the same record (same frames, same times, same split of the tokens), the
  question asked before the video too when the run trained so."""
  c = config_lib.load(TINY)
  c.model.reducer.args.strides = (1, 2, 2)  # 4 frames × 2×2 tokens
  c.data.update(source="manifest", manifest=str(manifest), timestamps=True, seq_len=192,
                timestamp_style="interleaved", choices="text", sampler="uniform",
                question_first=question_first)
  p = _fresh_run(c, tmp_path)
  r = next(r for _, r in records.read_manifest(manifest))
  clip = p.clip(r.video, r.start, r.end, r.scores)
  video = p.video_text(clip)
  assert video.count(prompts.VIDEO) == 4 and video.startswith(prompts.clock(clip.timestamps[0]))
  ids, rows = p._targets(r.question, list(r.options), video)  # pylint: disable=protected-access
  src = pipeline.ManifestSource(c.data, "test", "qa", p.tok, p.num_visual)
  ex = src.example(0, np.random.default_rng(0))
  n = int(ex["attention_mask"].sum())
  assert ids + rows[r.answer_index].tolist() == ex["input_ids"][:n].tolist()
  vid = np.flatnonzero(np.asarray(ids) == p.tok.video_token_id)
  assert len(vid) == p.num_visual == 16 and len(np.flatnonzero(np.diff(vid) > 1)) == 3
  question = p.tok.encode(r.question)
  before = [ids[i:i + len(question)] == question for i in range(vid[0])]
  after = [ids[i:i + len(question)] == question for i in range(vid[-1], len(ids))]
  assert (any(before), any(after)) == (question_first, True)


def test_rationale_is_trained_and_scored_alike(manifest, tmp_path):
  """`data.rationale`: a training answer cites the sampled frame inside each evidence range by
  the number the prompt gives it, and eval ranks the options after the rationale, token for
  token the training example."""
  c = config_lib.load(TINY)
  c.model.reducer.args.strides = (1, 2, 2)
  c.data.update(source="manifest", manifest=str(manifest), timestamps=True, seq_len=224,
                timestamp_style="numbered", choices="text", sampler="uniform", rationale=True)
  p = _fresh_run(c, tmp_path)
  recs = [r for _, r in records.read_manifest(manifest)]
  src = pipeline.ManifestSource(c.data, "test", "qa", p.tok, p.num_visual)
  checked = 0
  for i, r in enumerate(recs[:5]):
    clip = p.clip(r.video, r.start, r.end, r.scores)
    video = p.video_text(clip)
    assert video.startswith(f"frame 1 {prompts.clock(clip.timestamps[0])} ")
    ex = src.example(i, np.random.default_rng(0))
    n = int(ex["attention_mask"].sum())
    answer = p.tok.decode(ex["input_ids"][:n][ex["loss_mask"][:n] == 1].tolist(),
                          skip_special_tokens=True).strip()
    lead, said = answer.split(": ", 1)
    assert said == r.answer
    frames = clip.indices[clip.valid]
    for (a, b), name in zip(r.meta["evidence"], lead.split(" ", 1)[1].split(", ")):
      inside = [k + 1 for k, f in enumerate(frames) if a <= f < b]
      after = [k + 1 for k, f in enumerate(frames) if a <= f]
      want = inside[-1] if inside else after[0] if after else "none"
      assert name == str(want), (r.id, lead, inside, after)
      checked += 1
    ids, rows = p._targets(r.question, list(r.options), video, lead + ":")  # pylint: disable=protected-access
    assert ids + rows[r.answer_index].tolist() == ex["input_ids"][:n].tolist()
    assert lead + ":" in p.tok.decode(ids[-10:])  # the rationale is prompt, not target
  assert checked >= 6  # ordering cites two ranges
  generated = p.leads(p.features(clip), [r.question for r in recs[:3]], video)
  assert len(generated) == 3 and all(g.endswith(prompts.RATIONALE_END) for g in generated)
  res = benchmark.evaluate(recs[:5], benchmark.ModelAnswerer(p, "loglik"))
  assert all(row["rationale"].endswith(":") for row in res["rows"])
  # each row says whether its rationale cited the frames the training answer cites
  for r, row in zip(recs[:5], res["rows"]):
    clip = p.clip(r.video, r.start, r.end, r.scores)
    want = prompts.cite(prompts.evidence_frames(clip.timestamps, r.meta["evidence"], 4.0)) + ":"
    assert row["rationale_right"] == (row["rationale"] == want)
  assert "frames cited right" in benchmark.table(res["summary"])


def test_rationale_needs_numbered_frames_and_evidence(manifest, tmp_path):
  c = config_lib.load(TINY)
  c.data.update(source="manifest", manifest=str(manifest), timestamps=True, rationale=True)
  with pytest.raises(ValueError, match=r"rationale=True.*timestamp_style='numbered'"):
    config_lib.validate(c)
  rec = records.Record(id="x", video="v.mp4", turns=(("q?", "a"),), options=("a", "b"),
                       answer_index=0)
  c.data.timestamp_style = "numbered"
  with pytest.raises(records.RecordError, match="meta.evidence"):
    pipeline._turns(rec, "qa", c.data, np.random.default_rng(0), [0.0])  # pylint: disable=protected-access
