"""What a finished run learned: accuracy on its own held-out split, beside chance and beside the
same weights shown black frames (what the language model answers from the question alone).

`longvid run` calls `evaluate_run` after the last stage when the config has an `eval` block; the
result goes into summary.json under "heldout", the per-question rows into
`eval/heldout_<split>.json`, and `report.write` draws them with the loss curves.
"""

from __future__ import annotations

import json
import logging
import pathlib

from longvid_jax.data import records
from longvid_jax.evaluate import benchmark

log = logging.getLogger(__name__)


def heldout_manifest(config, workdir: pathlib.Path) -> pathlib.Path:
  """A manifest of the split `config.eval.split`: the synthetic source's videos of that split
  rendered to `workdir/heldout/`, or the manifest source's own file for that split."""
  split = config.eval.split
  if config.data.source == "synthetic":
    from longvid_jax.data import longvideo  # pylint: disable=g-import-not-at-top
    return longvideo.export_synthetic(config.data, split, workdir / "heldout",
                                      config.eval.videos)
  from longvid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  paths = pipeline.manifest_paths(config.data, split)
  if len(paths) != 1:
    raise ValueError(f"eval.split={split!r} matches {len(paths)} manifests; name one file")
  return pathlib.Path(paths[0])


def read_questions(path: pathlib.Path, videos: int | None = None) -> list[records.Record]:
  """Multiple-choice records of the first `videos` distinct videos (all when None); bad lines
  are counted and skipped."""
  out, seen, bad = [], set(), 0
  for _, r in records.read_manifest(path):
    if isinstance(r, ValueError):
      bad += 1
      continue
    if not r.options or r.answer_index is None:
      continue
    if r.video not in seen:
      if videos is not None and len(seen) >= videos:
        continue
      seen.add(r.video)
    out.append(r)
  if bad:
    log.warning("%s: skipped %d unreadable lines", path, bad)
  if not out:
    raise ValueError(f"{path} has no multiple-choice questions (options + answer_index) to "
                     "score; set eval.split=None to skip held-out evaluation")
  return out


def evaluate_run(config, workdir: pathlib.Path, progress: bool = True
                 ) -> tuple[dict, list[records.Record], dict[str, list[dict]]]:
  """(summary for summary.json, the questions, their answer rows on the video ("rows") and on
  black frames ("blank_rows")) of the run's final params."""
  from longvid_jax.evaluate.predictor import Predictor  # pylint: disable=g-import-not-at-top
  manifest = heldout_manifest(config, workdir)
  recs = read_questions(manifest, config.eval.videos)
  pred = Predictor(workdir)
  log.info("held-out evaluation: %d questions about %d %s videos", len(recs),
           len({r.video for r in recs}), config.eval.split)
  seen = benchmark.evaluate(recs, benchmark.ModelAnswerer(pred, "loglik"), progress=progress)
  blank = benchmark.evaluate(recs, benchmark.ModelAnswerer(pred, "loglik", blank=True),
                             progress=progress)
  summary = {"split": config.eval.split, "manifest": str(manifest), "mode": "loglik",
             **_with_blank(seen["summary"], blank["summary"])}
  return summary, recs, {"rows": seen["rows"], "blank_rows": blank["rows"]}


def _with_blank(seen: dict, blank: dict) -> dict:
  keep = ("n", "accuracy", "ci95", "chance")
  out = {k: seen[k] for k in keep}
  out["blank_accuracy"] = blank["accuracy"]
  out["seconds_per_question"] = seen["seconds_per_sample"]
  out["tasks"] = {t: {**{k: d[k] for k in keep}, "blank_accuracy": blank["tasks"][t]["accuracy"]}
                  for t, d in seen["tasks"].items()}
  return out


def finish(config, workdir: pathlib.Path, stages: list[tuple[str, pathlib.Path]],
           progress: bool = True) -> dict:
  """Held-out summary of a finished run, evaluated once: a rerun of the same finished recipe
  reuses `eval/heldout_<split>.json` unless the last stage finished after it was written."""
  out = workdir / "eval" / f"heldout_{config.eval.split}.json"
  done = stages[-1][1] / "DONE.json"
  if out.exists() and done.exists() and out.stat().st_mtime >= done.stat().st_mtime:
    return json.loads(out.read_text())["summary"]
  summary, recs, rows = evaluate_run(config, workdir, progress)
  if config.eval.report:
    from longvid_jax.evaluate import report  # pylint: disable=g-import-not-at-top
    summary["report"] = str(report.write(workdir / "report.png", stages, recs, rows["rows"],
                                         summary))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"summary": summary, **rows}, indent=1))
  return summary


def example(heldout: dict) -> tuple[str, str] | None:
  """(video, question) of the first held-out question, for the commands printed after a run."""
  for _, r in records.read_manifest(heldout["manifest"]):
    if not isinstance(r, ValueError):
      return r.video, r.question
  return None
