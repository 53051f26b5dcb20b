"""Converters from released dataset layouts to `records.Record`.

Each converter reads one release as published (a JSON, CSV or parquet file, or a folder of
per-task files) and yields a `Record` per example, or a `ValueError` naming the bad item so the
caller decides between skipping and raising (as `records.read_manifest` does). Video paths are
the release's file names joined to `video_root` when given; without it they stay relative and
resolve against the manifest's folder.

  llava           LLaVA-style conversations (LLaVA-Video-178K): id, video, conversations
  mvbench         one JSON per task: video, question, candidates, answer (text), [start, end]
  egoschema       questions.json (q_uid, question, "option 0".."option 4") + subset_answers.json
  nextqa          CSV: video, question, answer (0-4), qid, type, a0..a4 (+ map_vid_vidorID.json)
  mlvu            one JSON per task: video, duration, question, candidates, answer, question_type
  videomme        parquet or JSON rows: videoID, question_id, task_type, question,
                  options ("A. ..."), answer (letter)
  perceptiontest  {video_id: {metadata, mc_question: [{id, question, options, answer_id}]}}
  clevrer         [{scene_index, video_filename, questions: [{question_id, question,
                  question_type, answer | choices: [{choice_id, choice, answer}]}]}]
  activitynetqa   *_q.json [{video_name, question, question_id}] + *_a.json
                  [{question_id, answer, type}]: open-ended, scored by answer match

Open-ended records carry the answer in `turns` and no `options`; `longvid eval` generates a reply
and scores it by normalised match (or a judge model).
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from typing import Any, Callable, Iterator

from longvid_jax.data.records import LETTERS, Record
from longvid_jax.registry import Registry

Item = Record | ValueError
FORMATS: Registry[Callable[..., Iterator[Item]]] = Registry("dataset format")

_MEDIA_TAG = re.compile(r"\s*<(image|video)>\s*")


def convert(fmt: str, path: str | pathlib.Path, video_root: str | None = None,
            **options) -> Iterator[Item]:
  return FORMATS.get(fmt)(pathlib.Path(path), video_root, **options)


def _video(root: str | None, name: str) -> str:
  return str(pathlib.Path(root) / name) if root else name


def _load_json(path: pathlib.Path) -> Any:
  if path.suffix == ".jsonl":
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return json.loads(path.read_text())


def _json_files(path: pathlib.Path) -> list[pathlib.Path]:
  if path.is_dir():
    files = sorted(path.glob("*.json"))
    if not files:
      raise FileNotFoundError(f"{path} holds no .json files")
    return files
  return [path]


def _each(path: pathlib.Path, items, build: Callable[[Any, int], Record]) -> Iterator[Item]:
  """Applies `build(item, position)`; a bad item becomes a ValueError naming file and position."""
  for i, item in enumerate(items):
    try:
      yield build(item, i)
    except (KeyError, ValueError, TypeError, IndexError) as e:
      what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
      yield ValueError(f"{path}: item {i}: {what}")


def _choice(options: list[str], answer: str, what: str) -> int:
  try:
    return options.index(answer)
  except ValueError:
    raise ValueError(f"answer {answer!r} is not one of the {what} {options}") from None


def _mc(id_: str, video: str, question: str, options, answer_index: int | None,
        task: str, **kw) -> Record:
  options = tuple(str(o) for o in options)
  if not options or len(options) > len(LETTERS):
    raise ValueError(f"{len(options)} options (need 1 to {len(LETTERS)})")
  if answer_index is not None and not 0 <= answer_index < len(options):
    raise ValueError(f"answer index {answer_index} is out of range for {len(options)} options")
  answer = options[answer_index] if answer_index is not None else ""
  return Record(id=str(id_), video=video, turns=((str(question), answer),), options=options,
                answer_index=answer_index, task=task, **kw)


@FORMATS.register("llava")
def llava(path: pathlib.Path, video_root: str | None = None) -> Iterator[Item]:
  """Human/gpt turns pair up into (question, answer); media tags are dropped (the prompt adds
  its own <video>)."""

  def build(d, _):
    conv, turns = d["conversations"], []
    if len(conv) < 2 or len(conv) % 2:
      raise ValueError(f"{len(conv)} conversation turns; expected human/gpt pairs")
    for q, a in zip(conv[::2], conv[1::2]):
      if (q["from"], a["from"]) != ("human", "gpt"):
        raise ValueError(f"turns from {q['from']!r} then {a['from']!r}; expected human, gpt")
      turns.append((_MEDIA_TAG.sub("\n", q["value"]).strip(), a["value"].strip()))
    meta = {"data_source": d["data_source"]} if "data_source" in d else {}
    return Record(id=str(d["id"]), video=_video(video_root, d["video"]), turns=tuple(turns),
                  task="llava", meta=meta)

  yield from _each(path, _load_json(path), build)


@FORMATS.register("mvbench")
def mvbench(path: pathlib.Path, video_root: str | None = None) -> Iterator[Item]:
  """A task file or the folder of them; the file name is the task."""
  for f in _json_files(path):
    def build(d, i, task=f.stem):
      return _mc(f"{task}_{i}", _video(video_root, d["video"]), d["question"],
                 d["candidates"], _choice(d["candidates"], d["answer"], "candidates"),
                 f"mvbench/{task}", start=d.get("start"), end=d.get("end"))
    yield from _each(f, _load_json(f), build)


@FORMATS.register("egoschema")
def egoschema(path: pathlib.Path, video_root: str | None = None,
              answers: str | None = None) -> Iterator[Item]:
  """questions.json; answers from `answers` or a subset_answers.json beside it (questions
  without a public answer keep answer_index None)."""
  ans_file = pathlib.Path(answers) if answers else path.with_name("subset_answers.json")
  known = json.loads(ans_file.read_text()) if ans_file.exists() else {}

  def build(d, _):
    uid = d["q_uid"]
    opts = [d[f"option {j}"] for j in range(5)]
    idx = known.get(uid)
    return _mc(uid, _video(video_root, f"{uid}.mp4"), d["question"], opts,
               None if idx is None else int(idx), "egoschema")

  yield from _each(path, _load_json(path), build)


@FORMATS.register("nextqa")
def nextqa(path: pathlib.Path, video_root: str | None = None,
           video_map: str | None = None) -> Iterator[Item]:
  """The multiple-choice CSV; video ids map to folder/id through map_vid_vidorID.json when
  present (the release's layout), else the id is the file name."""
  map_file = pathlib.Path(video_map) if video_map else path.with_name("map_vid_vidorID.json")
  mapping = json.loads(map_file.read_text()) if map_file.exists() else {}

  def build(row, _):
    vid = row["video"]
    return _mc(f"{vid}_{row['qid']}", _video(video_root, f"{mapping.get(vid, vid)}.mp4"),
               row["question"], [row[f"a{j}"] for j in range(5)], int(row["answer"]),
               f"nextqa/{row.get('type', '')}".rstrip("/"))

  with open(path, newline="") as f:
    yield from _each(path, csv.DictReader(f), build)


@FORMATS.register("mlvu")
def mlvu(path: pathlib.Path, video_root: str | None = None) -> Iterator[Item]:
  """A task file or the folder of them (json/1_plotQA.json, ...)."""
  for f in _json_files(path):
    def build(d, i, stem=f.stem):
      task = d.get("question_type") or stem
      return _mc(f"{stem}_{i}", _video(video_root, d["video"]), d["question"],
                 d["candidates"], _choice(d["candidates"], d["answer"], "candidates"),
                 f"mlvu/{task}", meta={"duration": d.get("duration")})
    yield from _each(f, _load_json(f), build)


_LETTER_PREFIX = re.compile(r"^\s*([A-J])[.)]\s*")


@FORMATS.register("videomme")
def videomme(path: pathlib.Path, video_root: str | None = None) -> Iterator[Item]:
  """The released parquet (needs pyarrow) or the same rows as JSON / JSONL."""
  if path.suffix == ".parquet":
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or "
                       "pass the rows as JSON") from None
    rows = pq.read_table(path).to_pylist()
  else:
    rows = _load_json(path)

  def build(d, _):
    opts = [str(o) for o in d["options"]]
    for j, o in enumerate(opts):
      m = _LETTER_PREFIX.match(o)
      if not m or m.group(1) != LETTERS[j]:
        raise ValueError(f"option {o!r} does not start with '{LETTERS[j]}.'")
    letter = str(d["answer"]).strip()[:1]
    return _mc(d["question_id"], _video(video_root, f"{d['videoID']}.mp4"), d["question"],
               [_LETTER_PREFIX.sub("", o, count=1) for o in opts], LETTERS.index(letter),
               f"videomme/{d.get('task_type', '')}".rstrip("/"),
               meta={k: d[k] for k in ("duration", "domain", "sub_category") if k in d})

  yield from _each(path, rows, build)


@FORMATS.register("perceptiontest")
def perceptiontest(path: pathlib.Path, video_root: str | None = None) -> Iterator[Item]:
  """The multiple-choice questions of a split's annotation file (mc_question per video)."""
  data = _load_json(path)
  items = [(vid, q) for vid, v in data.items() for q in v.get("mc_question", [])]

  def build(item, _):
    vid, q = item
    idx = q.get("answer_id")
    return _mc(f"{vid}_{q['id']}", _video(video_root, f"{vid}.mp4"), q["question"],
               q["options"], None if idx is None else int(idx),
               f"perceptiontest/{q.get('area', '')}".rstrip("/"))

  yield from _each(path, items, build)


@FORMATS.register("clevrer")
def clevrer(path: pathlib.Path, video_root: str | None = None,
            grouped: bool = True) -> Iterator[Item]:
  """A split's annotation file. Descriptive questions are open-ended; the multiple-choice ones
  (explanatory, predictive, counterfactual) mark each choice correct or wrong and may have
  several correct, so each becomes a record when exactly one is correct, and otherwise one
  yes/no record per choice ("...: <choice>?"), CLEVRER's per-option scoring. Videos sit in the
  release's folders of 1000 (video_10000-11000/video_10000.mp4) unless `grouped` is False."""
  items = [(scene, q) for scene in _load_json(path) for q in scene.get("questions", [])]

  def where(scene) -> str:
    name, idx = scene["video_filename"], int(scene["scene_index"])
    lo = idx // 1000 * 1000
    return _video(video_root, f"video_{lo:05d}-{lo + 1000:05d}/{name}" if grouped else name)

  def build(item, _):
    scene, q = item
    qid, kind = f"{scene['scene_index']}_{q['question_id']}", q["question_type"]
    task, video = f"clevrer/{kind}", where(scene)
    if "choices" not in q:
      return [Record(id=qid, video=video, turns=((q["question"], str(q["answer"])),), task=task)]
    texts = [c["choice"] for c in q["choices"]]
    right = [c["answer"] == "correct" for c in q["choices"]]
    if any(c["answer"] not in ("correct", "wrong") for c in q["choices"]):
      raise ValueError(f"choice answers must be 'correct' or 'wrong', got "
                       f"{[c['answer'] for c in q['choices']]}")
    if sum(right) == 1:
      return [_mc(qid, video, q["question"], texts, right.index(True), task)]
    return [_mc(f"{qid}_{c['choice_id']}", video, f"{q['question'].rstrip('?')}: {t}?",
                ("yes", "no"), 0 if ok else 1, task)
            for c, t, ok in zip(q["choices"], texts, right)]

  for got in _each(path, items, build):
    yield from [got] if isinstance(got, ValueError) else got


ACTIVITYNET_QA_TYPES = ("motion", "spatial", "temporal", "yes_no", "color", "object",
                        "location", "number", "other")


@FORMATS.register("activitynetqa")
def activitynetqa(path: pathlib.Path, video_root: str | None = None, answers: str | None = None,
                  prefix: str = "v_", ext: str = ".mp4") -> Iterator[Item]:
  """Questions from `path` (e.g. test_q.json), answers from `answers` or the *_a.json beside it;
  videos are ActivityNet's files, `v_<video_name>.mp4`. Task = the question type."""
  ans_file = (pathlib.Path(answers) if answers
              else path.with_name(path.name.replace("_q.json", "_a.json")))
  if ans_file == path or not ans_file.exists():
    raise FileNotFoundError(f"{path}: no answers file {ans_file.name} beside it; pass --answers")
  known = {a["question_id"]: a for a in _load_json(ans_file)}

  def build(d, _):
    qid = d["question_id"]
    if qid not in known:
      raise ValueError(f"question {qid!r} has no answer in {ans_file.name}")
    a = known[qid]
    t = int(a.get("type", 8))
    task = ACTIVITYNET_QA_TYPES[t] if 0 <= t < len(ACTIVITYNET_QA_TYPES) else str(t)
    name = str(d["video_name"])
    video = name if name.startswith(prefix) else prefix + name
    return Record(id=str(qid), video=_video(video_root, video + ext),
                  turns=((str(d["question"]), str(a["answer"])),), task=f"activitynetqa/{task}")

  yield from _each(path, _load_json(path), build)
