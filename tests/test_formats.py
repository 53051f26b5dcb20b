"""Dataset converters on tiny fixture files in each release's layout."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from longvid_jax.data import commands, formats, records

FIX = pathlib.Path(__file__).parent / "fixtures" / "formats"


def _convert(fmt, path, **kw):
  items = list(formats.convert(fmt, FIX / path, **kw))
  return ([r for r in items if isinstance(r, records.Record)],
          [e for e in items if isinstance(e, ValueError)])


def _round_trip(recs):
  """Every record survives a manifest line."""
  for r in recs:
    assert records.Record.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_llava():
  recs, bad = _convert("llava", "llava.json", video_root="/data/llava")
  assert [r.id for r in recs] == ["clip_0001", "clip_0002"]
  assert recs[0].video == "/data/llava/academic/clip_0001.mp4"
  assert recs[0].turns == (("What does the person pick up?", "A red mug."),
                           ("Where does the person put it?", "On the shelf."))
  assert recs[0].meta == {"data_source": "academic"} and recs[1].text() == (
      "Describe the video in detail.", "A dog runs along a beach at sunset.")
  assert len(bad) == 1 and "item 2" in str(bad[0]) and "human/gpt pairs" in str(bad[0])
  _round_trip(recs)


def test_mvbench_folder():
  recs, bad = _convert("mvbench", "mvbench")
  assert not bad and [r.task for r in recs] == ["mvbench/action_sequence"] * 2 + [
      "mvbench/object_shuffle"]
  r = recs[1]
  assert (r.video, r.answer_index, r.answer, r.start, r.end) == (
      "M8T1W.mp4", 1, "Opened the fridge.", 0.0, 7.2)
  assert recs[2].start is None and recs[2].answer_index == 2
  _round_trip(recs)


def test_egoschema():
  recs, bad = _convert("egoschema", "egoschema/questions.json", video_root="v")
  assert not bad and len(recs) == 2
  assert recs[0].video == "v/0a1b2c3d-0000-4000-8000-000000000001.mp4"
  assert recs[0].options[2] == "Cook dinner." and recs[0].answer_index == 2
  assert recs[1].answer_index is None  # not in the public answer subset
  q, a = recs[0].text()
  assert q.startswith("What is c mainly") and "C. Cook dinner." in q and a == "C"
  _round_trip(recs)


def test_nextqa():
  recs, bad = _convert("nextqa", "nextqa/val.csv")
  assert not bad
  assert [(r.id, r.video, r.answer_index, r.task) for r in recs] == [
      ("5000000001_3", "0001/5000000001.mp4", 0, "nextqa/TN"),
      ("5000000002_7", "0002/5000000002.mp4", 2, "nextqa/CW")]
  assert recs[1].options == ("he is cold", "to dance", "to stop the car", "to stretch",
                             "he is angry")
  _round_trip(recs)


def test_mlvu():
  recs, bad = _convert("mlvu", "mlvu/1_plotQA.json")
  assert not bad and [r.answer_index for r in recs] == [0, 1]
  assert recs[1].task == "mlvu/plotQA" and recs[1].meta == {"duration": 310}
  _round_trip(recs)


def test_videomme():
  recs, bad = _convert("videomme", "videomme/test.json")
  assert not bad
  assert [(r.id, r.video, r.answer_index) for r in recs] == [
      ("901-1", "AAAAAAAAAAA.mp4", 2), ("901-2", "AAAAAAAAAAA.mp4", 1)]
  assert recs[0].options == ("None.", "One.", "Two.", "Three.")
  assert recs[0].task == "videomme/Counting Problem" and recs[0].meta["duration"] == "short"
  _round_trip(recs)


def test_perceptiontest():
  recs, bad = _convert("perceptiontest", "perceptiontest/mc_question_valid.json")
  assert not bad and [r.id for r in recs] == ["video_0001_0", "video_0001_1"]
  assert recs[1].answer == "3" and recs[1].task == "perceptiontest/memory"
  _round_trip(recs)


def test_bad_items_name_the_position(tmp_path):
  f = tmp_path / "t.json"
  f.write_text(json.dumps([
      {"video": "a.mp4", "question": "q", "candidates": ["x", "y"], "answer": "z"},
      {"video": "b.mp4", "question": "q", "answer": "x"},
      {"video": "c.mp4", "question": "q", "candidates": ["x", "y"], "answer": "y"}]))
  recs, bad = _convert("mvbench", f)
  assert [r.video for r in recs] == ["c.mp4"]
  assert "item 0: answer 'z' is not one of" in str(bad[0])
  assert "item 1: missing field 'candidates'" in str(bad[1])
  with pytest.raises(KeyError, match="dataset format"):
    formats.convert("nope", f)


def test_convert_command(tmp_path, capsys):
  ap = argparse.ArgumentParser()
  commands.register(ap.add_subparsers())
  out = tmp_path / "m" / "llava.jsonl"
  args = ap.parse_args(["convert-dataset", "llava", str(FIX / "llava.json"), str(out)])
  assert args.func(args) == 0
  assert "wrote 2 records" in capsys.readouterr().out
  got = [r for _, r in records.read_manifest(out)]
  assert [r.id for r in got] == ["clip_0001", "clip_0002"]
  assert got[0].video == str(out.parent / "academic" / "clip_0001.mp4")  # relative to manifest
  args = ap.parse_args(["convert-dataset", "llava", str(FIX / "llava.json"), str(out),
                        "--strict"])
  with pytest.raises(ValueError, match="item 2"):
    args.func(args)


def test_clevrer():
  recs, bad = _convert("clevrer", "clevrer/validation.json", video_root="val")
  assert [r.id for r in recs] == ["10000_0", "10000_1", "10000_2", "10000_3_0", "10000_3_1",
                                  "10000_3_2"]
  assert recs[0].video == "val/video_10000-11000/video_10000.mp4"
  assert (recs[0].options, recs[0].answer, recs[0].task) == ((), "cylinder", "clevrer/descriptive")
  assert recs[2].options == ("The presence of the gray cylinder",
                             "The rubber sphere's entering the scene") and recs[2].answer_index == 1
  # two correct choices: one yes/no question per choice
  assert [(r.question, r.answer) for r in recs[3:]] == [
      ("Which event will happen if the cube is removed: The sphere collides with the cylinder?",
       "yes"),
      ("Which event will happen if the cube is removed: The sphere and the cylinder collide?",
       "yes"),
      ("Which event will happen if the cube is removed: The cylinder stops?", "no")]
  assert len(bad) == 1 and "item 4" in str(bad[0]) and "'maybe'" in str(bad[0])
  flat, _ = _convert("clevrer", "clevrer/validation.json", grouped=False)
  assert flat[0].video == "video_10000.mp4"
  _round_trip(recs)


def test_activitynetqa_is_open_ended():
  recs, bad = _convert("activitynetqa", "activitynetqa/test_q.json", video_root="anet")
  assert [(r.id, r.video, r.answer, r.task) for r in recs] == [
      ("v_AAAAAAAAAAA_1", "anet/v_AAAAAAAAAAA.mp4", "yes", "activitynetqa/yes_no"),
      ("v_AAAAAAAAAAA_2", "anet/v_AAAAAAAAAAA.mp4", "red", "activitynetqa/color"),
      ("v_BBBBBBBBBBB_0", "anet/v_BBBBBBBBBBB.mp4", "3", "activitynetqa/number")]
  assert all(not r.options and r.answer_index is None for r in recs)
  assert len(bad) == 1 and "v_CCCCCCCCCCC_0" in str(bad[0]) and "no answer" in str(bad[0])
  with pytest.raises(FileNotFoundError, match="pass --answers"):
    _convert("activitynetqa", "activitynetqa/test_a.json")
  _round_trip(recs)
