"""One picture of a finished run (`DIR/report.png`): the loss curve of every stage, then a strip
of held-out videos with the frames the model was shown outlined, each with its questions, the
model's answers and the truth."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np

from longvid_jax.data import records

THUMB = 48  # thumbnail height in pixels
MAX_THUMBS = 24  # frames drawn per video besides the sampled ones


def _loss_rows(stage_dir: pathlib.Path) -> tuple[list[int], list[float]]:
  path = stage_dir / "metrics.jsonl"
  if not path.exists():
    return [], []
  steps, losses = [], []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if row.get("loss") is not None:
      steps.append(int(row["step"]))
      losses.append(float(row["loss"]))
  return steps, losses


def _strip(video: str, sampled: Sequence[int]) -> tuple[np.ndarray, list[int]]:
  """(thumbnails side by side [THUMB, W, 3], x offsets of the sampled frames)."""
  from longvid_jax.data.video import open_video  # pylint: disable=g-import-not-at-top
  with open_video(video) as reader:
    n = reader.info.num_frames
    shown = sorted(set(np.linspace(0, n - 1, min(n, MAX_THUMBS)).round().astype(int).tolist())
                   | {int(i) for i in sampled})
    frames = reader.read(shown, size=(THUMB, THUMB)).frames
  strip = np.concatenate(list(frames), axis=1)
  return strip, [shown.index(int(i)) * THUMB for i in sampled]


def write(path: pathlib.Path, stages: Sequence[tuple[str, pathlib.Path]],
          recs: Sequence[records.Record], rows: Sequence[dict], heldout: dict,
          videos: int = 4) -> pathlib.Path:
  """Draw the report; `stages` are (name, stage dir) in recipe order, `rows` the held-out
  answers of `recs` (same order)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top

  by_video: dict[str, list[tuple[records.Record, dict]]] = {}
  for r, row in zip(recs, rows):
    by_video.setdefault(r.video, []).append((r, row))
  shown = list(by_video.items())[:videos]
  text_lines = max((len(q) for _, q in shown), default=0)
  fig = plt.figure(figsize=(14, 3.0 + len(shown) * (1.2 + 0.17 * text_lines)))
  grid = fig.add_gridspec(1 + len(shown), max(1, len(stages)),
                          height_ratios=[2.2] + [1.0 + 0.15 * text_lines] * len(shown))
  for j, (name, sdir) in enumerate(stages):
    ax = fig.add_subplot(grid[0, j])
    steps, losses = _loss_rows(sdir)
    ax.plot(steps, losses, lw=1.2)
    ax.set_title(f"{j + 1}. {name}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if j == 0:
      ax.set_ylabel("training loss", fontsize=8)
    if not steps:
      ax.text(0.5, 0.5, "skipped", ha="center", va="center", transform=ax.transAxes)
  for i, (video, qa) in enumerate(shown):
    ax = fig.add_subplot(grid[1 + i, :])
    strip, xs = _strip(video, qa[0][1].get("frames", []))
    ax.imshow(strip)
    for x in xs:
      ax.add_patch(Rectangle((x - 0.5, -0.5), THUMB, THUMB, fill=False, ec="red", lw=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{pathlib.Path(video).name}: sampled frames outlined in red", fontsize=8,
                 loc="left")
    lines = []
    for r, row in qa:
      choice = row.get("choice")
      said = r.options[choice] if choice is not None else "(no answer)"
      mark = "✓" if row["correct"] else "✗"
      lines.append(f"{mark} {r.question:<48} model: {said:<14} truth: {r.answer}")
    ax.text(0, -0.08, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=8,
            family="monospace")
  lo, hi = heldout["ci95"]
  fig.suptitle(f"held-out {heldout['split']}: accuracy {heldout['accuracy']:.3f} "
               f"(95% CI {lo:.2f}–{hi:.2f}, n={heldout['n']}), blank frames "
               f"{heldout['blank_accuracy']:.3f}, chance {heldout['chance']:.3f}", fontsize=10)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
