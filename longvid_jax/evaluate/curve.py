"""Held-out accuracy against training steps: whether a run had converged.

Every params snapshot a run kept (`stages.<name>.snapshot_every`) and each stage's final params
are scored on one manifest the same way (`benchmark.evaluate` with the run's own frames and
prompt), and placed on one step axis that counts the stages' steps in recipe order.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

from longvid_jax import runs
from longvid_jax.data.records import Record
from longvid_jax.evaluate import benchmark
from longvid_jax.evaluate.predictor import Predictor
from longvid_jax.train import runner


@dataclasses.dataclass(frozen=True)
class Point:
  stage: str
  step: int  # within the stage
  total_step: int  # over the recipe, stages in order
  params: pathlib.Path


def points(root: str | pathlib.Path) -> list[Point]:
  """The run's snapshots and finished stages' params, in training order."""
  run = runs.open_run(root)
  out, offset = [], 0
  for i, name in enumerate(run.config.recipe):
    sdir = runner.stage_dir(run.root, i, name)
    done = sdir / "DONE.json"
    if not done.is_file():
      break  # later stages start from this one: nothing after it was trained
    steps = int(json.loads(done.read_text()).get("steps") or 0)
    snaps = sorted((sdir / "snapshots").glob("[0-9]*"), key=lambda p: int(p.name))
    out += [Point(name, int(p.name), offset + int(p.name), p) for p in snaps
            if int(p.name) < steps]
    out.append(Point(name, steps, offset + steps, sdir / "params"))
    offset += steps
  if not out:
    raise FileNotFoundError(f"{run.root} has no finished stage to score")
  return out


def curve(root: str | pathlib.Path, recs: Sequence[Record], mode: str = "loglik",
          limit: int | None = None, progress: bool = False) -> dict:
  """{"points": [{stage, step, total_step, accuracy, ci95, chance, tasks}, ...]}."""
  pred = Predictor(root)
  rows = []
  pts = points(root)
  for j, p in enumerate(pts):
    pred.use_params(p.params)
    if progress:
      print(f"[{j + 1}/{len(pts)}] {p.stage} step {p.step}", flush=True)
    s = benchmark.evaluate(recs, benchmark.ModelAnswerer(pred, mode), limit)["summary"]
    rows.append({"stage": p.stage, "step": p.step, "total_step": p.total_step,
                 "params": str(p.params), "n": s["n"], "accuracy": s["accuracy"],
                 "ci95": s["ci95"], "chance": s["chance"],
                 "tasks": {t: v["accuracy"] for t, v in s["tasks"].items()}})
  return {"points": rows}


def table(result: dict) -> str:
  lines = ["| stage | step | total step | n | accuracy | 95% CI | chance |",
           "|---|---:|---:|---:|---:|---|---:|"]
  for r in result["points"]:
    lo, hi = r["ci95"]
    lines.append(f"| {r['stage']} | {r['step']} | {r['total_step']} | {r['n']} | "
                 f"{r['accuracy']:.3f} | {lo:.2f}–{hi:.2f} | {r['chance']:.3f} |")
  return "\n".join(lines)


def plot(result: dict, path: str | pathlib.Path, title: str = "") -> pathlib.Path:
  """Accuracy with its 95% band against total steps, per task, stage boundaries and chance."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  pts = result["points"]
  x = [r["total_step"] for r in pts]
  fig, ax = plt.subplots(figsize=(8, 4.5))
  ax.plot(x, [r["accuracy"] for r in pts], "o-", color="k", lw=2, label="all")
  ax.fill_between(x, [r["ci95"][0] for r in pts], [r["ci95"][1] for r in pts], color="k",
                  alpha=0.12, lw=0)
  for t in sorted({t for r in pts for t in r["tasks"]}):
    ax.plot(x, [r["tasks"].get(t) for r in pts], ".-", lw=1, alpha=0.8, label=t)
  ax.plot(x, [r["chance"] for r in pts], ":", color="0.4", label="chance")
  for r in pts:
    if r is pts[-1] or pts[pts.index(r) + 1]["stage"] != r["stage"]:
      ax.axvline(r["total_step"], color="0.8", lw=0.8)
      ax.text(r["total_step"], 1.01, r["stage"], rotation=90, fontsize=7, ha="right", va="bottom")
  ax.set_ylim(0, 1.08)
  ax.set_xlabel("training step (stages in recipe order)")
  ax.set_ylabel("held-out accuracy (band: 95% CI)")
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, ncol=3, loc="lower right")
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
