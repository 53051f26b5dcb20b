"""Evaluation over a Record manifest: accuracy per task with its 95% interval and chance level,
visual tokens and seconds per sample, as JSON and as a table.

Multiple-choice records (options + answer_index) and open-ended ones (an answer, no options) mix
freely. An answerer maps a record to {"choice": option index or None, ...} or, for an open-ended
record, {"reply": text, ...}; the model (log-likelihood ranking or generation plus parsing), the
frame oracle and the answer prior all fit that shape, so their numbers land in the same table.
Open-ended replies are scored by normalised match, or by a judge model when one is given
(`evaluate/openended.py`); their chance level is the most common answer's share of the task.
"""

from __future__ import annotations

import collections
import math
import re
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from longvid_jax.data import pipeline, prompts, records, shots, video
from longvid_jax.data.records import LETTERS, Record, RecordError
from longvid_jax.evaluate import openended, oracle
from longvid_jax.sampling import samplers

Answerer = Callable[[Record], dict]


def parse_choice(text: str, options: Sequence[str]) -> int | None:
  """A generated reply → option index: a leading letter ("B", "(B)", "B. red"), else the one
  option whose text it is or contains; None when it names none or several."""
  t = text.strip()
  m = re.match(r"^\(?([A-J])(?:[\).:,]|\s|$)", t)
  if m and LETTERS.index(m.group(1)) < len(options):
    return LETTERS.index(m.group(1))
  low = t.lower().strip(" .!\"'")
  exact = [i for i, o in enumerate(options) if o.lower() == low]
  if exact:
    return exact[0]
  hits = [i for i, o in enumerate(options)
          if re.search(r"\b" + re.escape(o.lower()) + r"\b", low)]
  # "a red circle" also matches option "red": drop options inside another matched option
  hits = [i for i in hits if not any(j != i and options[i].lower() in options[j].lower()
                                     for j in hits)]
  return hits[0] if len(hits) == 1 else None


def truth_scores(record: Record) -> np.ndarray:
  """Shot-start scores from the generator's timeline: 1 at every cut, 0 elsewhere."""
  s = np.zeros(int(record.meta["num_frames"]), np.float32)
  for shot in record.meta["timeline"][1:]:
    s[shot["start_frame"]] = 1.0
  return s


class OracleAnswerer:
  """The frame oracle behind a sampler; shot scores from the timeline ("truth") or from
  TransNetV2 on the file ("transnetv2", through the shot cache)."""

  def __init__(self, sampler: str = "uniform", k: int = 8, scores: str = "truth"):
    self.sampler, self.k, self.scores = samplers.SAMPLERS.get(sampler)(), k, scores

  def indices(self, record: Record) -> np.ndarray:
    n = int(record.meta["num_frames"])
    s = None
    if "scores" in self.sampler.needs:
      if self.scores == "truth":
        s = truth_scores(record)
      else:
        s = samplers.shot_start_scores(shots.predict(record.video).single)
    sel = self.sampler(self.k, num_frames=n, scores=s)
    return sel.indices[sel.valid]

  def __call__(self, record: Record) -> dict:
    if not record.options:  # the oracle reads the generator's multiple-choice questions only
      return {"reply": "", "visual_tokens": 0}
    idx = self.indices(record)
    return {"choice": oracle.oracle_choice(record, idx), "visual_tokens": 0,
            "evidence_seen": oracle.evidence_seen(record, idx)}


MODES = ("loglik", "calibrated", "generate")
SHARES = {"evidence_seen": "evidence sampled", "rationale_right": "frames cited right"}


class ModelAnswerer:
  """A Predictor; a video's features are computed once for all its questions in a row.

  Modes: `loglik` ranks options by log p(option | video, question), each phrased as training
  phrased it (`Predictor.choices`: the letter after the lettered question for a run trained on
  manifests, the option's text after the bare question for the synthetic source); `calibrated`
  subtracts the same score with black frames, so an option wins by what the video adds to it,
  not by how likely the language model finds it anyway; `generate` decodes a reply and parses
  it.
  """

  def __init__(self, predictor, mode: str = "loglik", max_new_tokens: int = 24,
               blank: bool = False):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    self.p, self.mode, self.max_new_tokens = predictor, mode, max_new_tokens
    self.blank = blank  # black frames: what the same weights answer without the video
    self._key, self._clip, self._feats = None, None, None
    self._blank_feats, self._blank_scores = None, {}

  def _blank_loglik(self, questions, vtext) -> list[np.ndarray]:
    """Option scores on black frames. Black frames look the same in every video, so an option's
    score depends only on (question, option, the video's text) and is computed once."""
    if self._blank_feats is None:
      self._blank_feats = self.p.features(self._clip, blank=True)
    missing: dict[str, list[str]] = {}
    for q, options in questions:
      for o in options:
        if (q, o, vtext) not in self._blank_scores and o not in missing.setdefault(q, []):
          missing[q].append(o)
    todo = [(q, opts) for q, opts in missing.items() if opts]
    if todo:
      for (q, opts), scores in zip(todo, self.p.loglik_many(self._blank_feats, todo, vtext)):
        self._blank_scores.update({(q, o, vtext): float(s) for o, s in zip(opts, scores)})
    return [np.array([self._blank_scores[(q, o, vtext)] for o in options])
            for q, options in questions]

  def _open(self, r: Record) -> None:
    key = (r.video, r.start, r.end)
    if key != self._key:
      self._clip = self.p.clip(r.video, r.start, r.end, r.scores)
      if not self.blank:
        self._feats = self.p.features(self._clip)
      self._key = key

  def __call__(self, r: Record) -> dict:
    return self.many([r])[0]

  def many(self, recs: Sequence[Record]) -> list[dict]:
    """Answers to records about one clip (same video and window), scored in one batch."""
    self._open(recs[0])
    vtext = self.p.video_text(self._clip)
    frames = self._clip.indices[self._clip.valid].tolist()
    answers: dict[int, dict] = {}
    # free-form questions are answered by generation in every mode, multiple choice in `generate`
    generated = [i for i, r in enumerate(recs) if not r.options or self.mode == "generate"]
    if generated:
      feats = self.p.features(self._clip, blank=True) if self.blank else self._feats
      for i in generated:
        q, o = recs[i].question, recs[i].options
        t = self.p.generate(feats, records.multiple_choice_question(q, o) if o else q, vtext,
                            self.max_new_tokens).text
        answers[i] = {"choice": parse_choice(t, o), "reply": t} if o else {"reply": t}
    ranked = [i for i in range(len(recs)) if i not in answers]
    if ranked:
      questions = [self.p.choices(recs[i].question, recs[i].options) for i in ranked]
      leads = [""] * len(questions)
      if self.blank:
        scores = self._blank_loglik(questions, vtext)
      else:
        leads = self.p.leads(self._feats, [q for q, _ in questions], vtext)
        scores = self.p.loglik_many(self._feats, questions, vtext, leads)
        if self.mode == "calibrated":
          scores = [s - b for s, b in zip(scores, self._blank_loglik(questions, vtext))]
      for i, sc, lead in zip(ranked, scores, leads):
        answers[i] = {"choice": int(np.argmax(sc)), "scores": [round(float(v), 4) for v in sc],
                      **({"rationale": lead} if lead else {})}
    out = []
    for i, r in enumerate(recs):
      row = {"visual_tokens": self.p.num_visual, "frames": frames, **answers[i]}
      if "evidence" in r.meta:
        row["evidence_seen"] = oracle.evidence_seen(r, frames)
        if "rationale" in row and r.meta.get("fps"):
          cited = prompts.evidence_frames(self._clip.timestamps, r.meta["evidence"], r.meta["fps"])
          row["rationale_right"] = row["rationale"] == prompts.rationale(cited)
      out.append(row)
    return out


def is_open(r: Record) -> bool:
  """An open-ended record: an answer to match and no options to choose from."""
  return not r.options and bool(r.answer)


def evaluate(recs: Iterable[Record], answer: Answerer, limit: int | None = None,
             progress: bool = False, strict: bool = False,
             skips: pipeline.Skips | None = None, judge=None) -> dict:
  """Run `answer` over multiple-choice and open-ended records; returns {"rows": [...],
  "summary": {...}}. `judge` (an `openended.Judge`) decides open-ended replies instead of
  normalised match.

  The training pipeline's policy for bad input: a record whose video cannot be read (missing,
  corrupt, truncated to nothing) is skipped and counted by reason in `summary["skipped"]`, so
  one bad file costs its questions, not the evaluation; `strict` raises instead. `skips` may
  already hold the manifest's bad lines."""
  skips = skips if skips is not None else pipeline.Skips()
  recs = [r for r in recs if (r.options and r.answer_index is not None) or is_open(r)][:limit]
  if not recs:
    raise ValueError("no records to evaluate: need multiple choice (options + answer_index) or "
                     "open-ended ones (an answer in turns, no options)")
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(recs), unit="q", desc="eval")
  rows = []
  for group in _by_clip(recs):
    t0 = time.time()
    try:  # an answerer with `many` scores the questions about one clip together
      outs = answer.many(group) if hasattr(answer, "many") else [answer(r) for r in group]
    except Exception as e:  # noqa: BLE001 - one bad video must not stop the evaluation
      if isinstance(e, video.BUGS):
        raise
      where = f"record {group[0].id!r} ({group[0].video})"
      if strict:
        raise RecordError(f"{where}: {e}", video.error_reason(e)) from e
      for r in group:
        skips.add(f"{r.id}@{r.video}", video.error_reason(e),
                  f"record {r.id!r} ({r.video}): {e}")
      if bar is not None:
        bar.update(len(group))
      continue
    seconds = round((time.time() - t0) / len(group), 4)
    for r, out in zip(group, outs):
      rows.append({"id": r.id, "task": r.task, "seconds": seconds,
                   **(_open_row(r, out, judge) if is_open(r) else _choice_row(r, out))})
    if bar is not None:
      bar.update(len(group))
  if bar is not None:
    bar.close()
  if not rows:
    raise ValueError(f"no record could be evaluated ({skips.summary()}); see the warnings above, "
                     "or rerun with --strict to stop at the first")
  _open_chance(rows)
  summary = summarise(rows)
  if judge is not None:
    summary["judge"] = judge.source
  summary["skipped"] = {"n": sum(skips.counts.values()), "by_reason": dict(skips.counts)}
  return {"rows": rows, "summary": summary,
          "skipped": [{"record": k, "reason": r, "message": m} for k, (r, m) in skips.bad.items()]}


def _choice_row(r: Record, out: dict) -> dict:
  return {"answer_index": r.answer_index, "num_options": len(r.options),
          "chance": 1 / len(r.options), "correct": out.get("choice") == r.answer_index, **out}


def _open_row(r: Record, out: dict, judge) -> dict:
  reply = str(out.get("reply", ""))
  row = {"open": True, "answer": r.answer, **out, "reply": reply,
         "exact": openended.exact(reply, r.answer), "match": openended.match(reply, r.answer)}
  if judge is not None:
    row.update(judge(r.question, r.answer, reply))
  row["correct"] = row["judge"] if judge is not None else row["match"]
  return row


def _open_chance(rows: list[dict]) -> None:
  """An open-ended row's chance level: the most common answer's share of its task."""
  by = collections.defaultdict(list)
  for row in rows:
    if row.get("open"):
      by[row["task"]].append(row)
  for rs in by.values():
    rate = openended.majority_rate([r["answer"] for r in rs])
    for r in rs:
      r["chance"] = rate


def _by_clip(recs: Sequence[Record]) -> list[list[Record]]:
  """Runs of consecutive records about the same clip (video and window), in order."""
  groups: list[list[Record]] = []
  for r in recs:
    if groups and (groups[-1][0].video, groups[-1][0].start, groups[-1][0].end) == (
        r.video, r.start, r.end):
      groups[-1].append(r)
    else:
      groups.append([r])
  return groups


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (95% at z=1.96): unlike p ± z·se it stays
  inside [0, 1] and is honest at the 0% and 100% a small task can hit."""
  if n <= 0:
    return 0.0, 1.0
  p = correct / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def _accuracy(rows: list[dict]) -> dict:
  k = sum(bool(r["correct"]) for r in rows)
  return {"n": len(rows), "accuracy": k / len(rows),
          "ci95": [round(b, 4) for b in wilson(k, len(rows))],
          "chance": float(np.mean([r["chance"] for r in rows]))}


def _shares(rows: list[dict]) -> dict:
  """Of the rows that say: the share whose evidence was sampled, and whose rationale cited the
  right frames."""
  out = {}
  for key in SHARES:
    got = [r[key] for r in rows if key in r]
    if got:
      out[key] = float(np.mean(got))
  return out


def summarise(rows: list[dict]) -> dict:
  by = collections.defaultdict(list)
  for row in rows:
    by[row["task"]].append(row)
  tasks = {}
  for t in sorted(by):
    tasks[t] = {**_accuracy(by[t]), **_shares(by[t])}
  free = [r for r in rows if r.get("open")]
  return {
      **_shares(rows),
      **({"open_ended": {"n": len(free), **{k: float(np.mean([r[k] for r in free]))
                                            for k in ("exact", "match", "judge")
                                            if k in free[0]}}} if free else {}),
      **_accuracy(rows),
      "mean_task_accuracy": float(np.mean([v["accuracy"] for v in tasks.values()])),
      "unparsed": sum(r.get("choice") is None for r in rows if not r.get("open")),
      "visual_tokens_per_sample": float(np.mean([r.get("visual_tokens", 0) for r in rows])),
      "seconds_per_sample": float(np.mean([r["seconds"] for r in rows])),
      "tasks": tasks,
  }


def table(summary: dict, title: str = "") -> str:
  """A Markdown table: one row per task, then the overall row. A blank-frames column appears
  when the summary has one (held-out scoring), a column per `SHARES` entry any row has."""
  rows = [*summary["tasks"].items(), ("**all**", summary)]
  blank = "blank_accuracy" in summary
  shares = [k for k in SHARES if any(k in d for _, d in rows)]
  head = ["task", "n", "accuracy", "95% CI"] + ["blank frames"] * blank + ["chance"] + [
      SHARES[k] for k in shares]
  lines = [f"**{title}**", ""] if title else []
  lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for name, d in rows:
    lo, hi = d["ci95"]
    cells = [name, str(d["n"]), f"{d['accuracy']:.3f}", f"{lo:.2f}–{hi:.2f}"]
    if blank:
      cells.append(f"{d['blank_accuracy']:.3f}")
    cells.append(f"{d['chance']:.3f}")
    cells += [f"{d[k]:.2f}" if k in d else "-" for k in shares]
    lines.append("| " + " | ".join(cells) + " |")
  skipped = summary.get("skipped", {})
  if skipped.get("n"):
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(skipped["by_reason"].items()))
    lines += ["", f"skipped {skipped['n']} records that could not be read ({reasons}); they are "
              "not in n"]
  free = summary.get("open_ended")
  if free:
    by = f", judge ({summary['judge']}) {free['judge']:.3f}" if "judge" in free else ""
    lines += ["", f"open-ended: {free['n']} questions, exact match {free['exact']:.3f}, "
              f"normalised match {free['match']:.3f}{by}; chance there is the most common "
              "answer's share of its task"]
  if "visual_tokens_per_sample" in summary:
    lines += ["", f"visual tokens/sample: {summary['visual_tokens_per_sample']:.0f}, "
              f"seconds/sample: {summary['seconds_per_sample']:.3f}, "
              f"unparsed replies: {summary['unparsed']}"]
  return "\n".join(lines)
