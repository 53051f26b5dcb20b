"""The one internal record every dataset format is converted to, and JSONL manifests of them.

A manifest is a JSONL file with one `Record` per line; relative video paths are resolved against
the manifest's folder so a dataset directory can be moved as a whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Iterable, Iterator

SPLITS = ("train", "val", "test")
LETTERS = "ABCDEFGHIJ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


class RecordError(ValueError):
  """A record that cannot become an example; `reason` is its skip-statistics key."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Record:
  """One example: a video and the conversation about it.

  `turns` are (question, answer) pairs; the first question is the one shown with the video.
  Multiple-choice records keep the bare question in `turns[0][0]`, the candidates in `options`
  and the right one in `answer_index` (its text is `turns[0][1]`), so evaluation can score
  options by likelihood or parse a generated letter.
  """
  id: str
  video: str  # a video file, or a folder of frame images
  turns: tuple[tuple[str, str], ...] = ()
  options: tuple[str, ...] = ()
  answer_index: int | None = None
  task: str = ""  # e.g. "needle", "counting", "mvbench/action_sequence"
  start: float | None = None  # use only [start, end) seconds of the video
  end: float | None = None
  scores: str | None = None  # precomputed per-frame shot-boundary scores (.npy)
  # free-form; `caption` (a description of the whole video) serves the caption and mix tasks
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def question(self) -> str:
    return self.turns[0][0] if self.turns else ""

  @property
  def answer(self) -> str:
    return self.turns[0][1] if self.turns else ""

  def text(self, turn: int = 0, letters: bool = True) -> tuple[str, str]:
    """(question, answer) to train on: a multiple-choice record shows its lettered options and
    answers with the letter (`letters`), or asks the bare question answered by the option's
    text; likelihood scoring phrases it the same way (`data.choices`)."""
    if letters and self.options and turn == 0 and self.answer_index is not None:
      return multiple_choice_question(self.question, self.options), LETTERS[self.answer_index]
    return self.turns[turn]

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["turns"] = [list(t) for t in self.turns]
    d["options"] = list(self.options)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any], root: str | os.PathLike | None = None) -> "Record":
    """Build from a manifest line; raises ValueError naming the missing or bad field."""
    if not isinstance(d, dict):
      raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    if d.get("features", 0) is None:  # manifests written before the field was dropped
      d = {k: v for k, v in d.items() if k != "features"}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f"unknown field(s) {sorted(unknown)}; a record has {sorted(fields)}")
    for name in ("id", "video"):
      if not isinstance(d.get(name), str) or not d[name]:
        raise ValueError(f"field {name!r} is missing or not a non-empty string")
    try:
      turns = tuple((str(q), str(a)) for q, a in d.get("turns") or ())
    except (TypeError, ValueError) as e:
      raise ValueError(f"field 'turns' must be a list of [question, answer] pairs ({e})") from e
    options = tuple(str(o) for o in d.get("options") or ())
    idx = d.get("answer_index")
    if idx is not None and not (isinstance(idx, int) and 0 <= idx < len(options)):
      raise ValueError(f"answer_index {idx!r} does not index the {len(options)} options")
    def resolve(p):  # paths relative to the manifest's folder, so a dataset moves as a whole
      return str(pathlib.Path(root) / p) if root is not None and p and not os.path.isabs(p) else p

    return cls(**{**d, "video": resolve(d["video"]), "scores": resolve(d.get("scores")),
                  "turns": turns, "options": options, "meta": dict(d.get("meta") or {})})


def multiple_choice_question(question: str, options: Iterable[str]) -> str:
  lines = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
  return "\n".join([question, *lines, MC_INSTRUCTION])


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> int:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = 0
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r.to_json()) + "\n")
      n += 1
  return n


def read_manifest(path: str | os.PathLike) -> Iterator[tuple[int, Record | ValueError]]:
  """(line number, record) per non-empty line; a bad line yields a ValueError naming it
  instead of a record, so callers decide between skipping and raising.

  Lines are read as bytes and decoded one by one, so a line that is not UTF-8 is one bad line
  rather than an error that stops the whole file."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"manifest {path} does not exist")
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield lineno, ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start} is "
                                 f"{raw[e.start]:#04x}); write the manifest as UTF-8")
        continue
      try:
        yield lineno, Record.from_json(json.loads(line), root=path.parent)
      except (json.JSONDecodeError, ValueError, TypeError) as e:
        yield lineno, ValueError(f"{path}:{lineno}: {e}")
