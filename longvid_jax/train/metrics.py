"""Per-stage metrics: JSON lines (for scripts) and TensorBoard scalars (for people).

A non-finite value (the loss of a skipped step) is written as null and left out of TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

from tensorboardX import SummaryWriter


class MetricWriter:
  def __init__(self, stage_dir: pathlib.Path, resume_step: int):
    self.path = stage_dir / "metrics.jsonl"
    self.rows = read_metrics(self.path)
    # rows logged after the checkpoint we resume from will be produced again
    self.rows = [r for r in self.rows if r["step"] <= resume_step]
    tmp = self.path.with_name(self.path.name + ".tmp")  # a kill mid-rewrite must not lose rows
    tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
    os.replace(tmp, self.path)
    self.tb = SummaryWriter(str(stage_dir / "tensorboard"))

  @property
  def elapsed(self) -> float:
    return self.rows[-1]["elapsed"] if self.rows else 0.0

  def write(self, step: int, scalars: dict[str, float]) -> None:
    values = {k: float(v) for k, v in scalars.items()}
    row = {"step": step, **{k: v if math.isfinite(v) else None for k, v in values.items()}}
    self.rows.append(row)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in values.items():
      if math.isfinite(v):
        self.tb.add_scalar(k, v, step)

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
