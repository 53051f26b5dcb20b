"""Per-stage metrics: JSON lines (for scripts) and TensorBoard scalars (for people)."""

from __future__ import annotations

import json
import pathlib

from tensorboardX import SummaryWriter


class MetricWriter:
  def __init__(self, stage_dir: pathlib.Path, resume_step: int):
    self.path = stage_dir / "metrics.jsonl"
    self.rows = read_metrics(self.path)
    # rows logged after the checkpoint we resume from will be produced again
    self.rows = [r for r in self.rows if r["step"] <= resume_step]
    self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
    self.tb = SummaryWriter(str(stage_dir / "tensorboard"))

  @property
  def elapsed(self) -> float:
    return self.rows[-1]["elapsed"] if self.rows else 0.0

  def write(self, step: int, scalars: dict[str, float]) -> None:
    row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
    self.rows.append(row)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in scalars.items():
      self.tb.add_scalar(k, float(v), step)

  def close(self) -> None:
    self.tb.close()


def read_metrics(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
  return rows
