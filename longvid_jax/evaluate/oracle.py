"""Answerers that need no trained model: bounds that separate sampling from modelling.

`oracle_choice` knows exactly what every frame shows (the generator's timeline) but may only look
at the frames a sampler chose, so its accuracy is the best any model could reach with those
frames; where the evidence was not sampled it guesses the first option, which is chance under
balanced answer positions. `PriorBaseline` never looks at the video: per task it picks the answer
most often right in a training manifest.
"""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

import numpy as np

from longvid_jax.data.records import Record


def visible_shots(timeline: Sequence[dict], indices: Iterable[int]) -> list[dict]:
  """The shots that at least one chosen frame falls in, in time order."""
  idx = np.asarray(sorted(set(int(i) for i in indices)), np.int64)
  return [s for s in timeline
          if np.any((idx >= s["start_frame"]) & (idx < s["end_frame"]))]


def _read(record: Record, indices: Sequence[int]) -> str | None:
  """The answer text the chosen frames support, or None when they do not show it."""
  timeline = record.meta.get("timeline")
  q = record.meta.get("query")
  if not timeline or not q:
    return None
  seen = visible_shots(timeline, indices)
  shapes = {s["shape"]: s for s in seen if s["kind"] == "shapes"}
  ask = q["ask"]
  if ask == "color":
    return shapes[q["shape"]]["color"] if q["shape"] in shapes else None
  if ask == "count":
    return str(shapes[q["shape"]]["count"]) if q["shape"] in shapes else None
  if ask == "order":
    a, b = q["shapes"]
    if a not in shapes or b not in shapes:
      return None
    return "before" if shapes[a]["start_frame"] < shapes[b]["start_frame"] else "after"
  if ask == "describe":
    # what the last chosen frame at or before the asked time shows (else the first after it)
    idx = np.sort(np.asarray(list(indices), np.int64))
    before = idx[idx <= q["frame"]]
    near = int(before[-1] if len(before) else idx[0])
    shot = next(s for s in timeline if s["start_frame"] <= near < s["end_frame"])
    return shot["description"]
  raise ValueError(f"record {record.id}: unknown query kind {ask!r}")


def oracle_choice(record: Record, indices: Sequence[int]) -> int:
  text = _read(record, indices)
  return record.options.index(text) if text in record.options else 0


def evidence_seen(record: Record, indices: Sequence[int]) -> bool:
  """Whether every shot the question depends on has a chosen frame."""
  idx = np.asarray(list(indices), np.int64)
  return all(np.any((idx >= a) & (idx < b)) for a, b in record.meta.get("evidence", ()))


class PriorBaseline:
  """Per task, the answer text most often right in `train` (the first option when absent); an
  open-ended question gets that text as its reply."""

  def __init__(self, train: Iterable[Record]):
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train:
      counts[r.task][r.answer] += 1
    self.best = {t: [a for a, _ in c.most_common()] for t, c in counts.items()}

  def choice(self, record: Record) -> int:
    for a in self.best.get(record.task, ()):
      if a in record.options:
        return record.options.index(a)
    return 0

  def __call__(self, record: Record) -> dict:
    if not record.options:
      return {"reply": next(iter(self.best.get(record.task, ())), "")}
    return {"choice": self.choice(record)}
