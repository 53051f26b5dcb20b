"""How much of each synthetic video's content a linear probe can read from a run's tokens.

Separates "the information is not in the visual tokens" from "the LLM has not learned to use
it": a ridge classifier per question (background, shape and colour of the first and last shot)
is fitted on the tokens of training videos and scored on held-out ones, at three points of the
data flow:

  pooled   the frozen encoder's grid, avgpool3d'd to the reducer's strides (no training)
  reduced  the trained reducer's output (e.g. SVC latents)
  visual   the projector's output: what the LLM sees

  python tools/probe_tokens.py WORKDIR [--videos 240]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from longvid_jax.data import pipeline, synthetic
from longvid_jax.evaluate.predictor import Predictor
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.models.reducers.pooling import avgpool3d

POINTS = ("pooled", "reduced", "visual")


def _labels(spec: synthetic.VideoSpec) -> dict[str, str]:
  first, last = spec.shots[0], spec.shots[-1]
  return {"background, first shot": first.background, "shape, first shot": first.shape,
          "colour, first shot": first.color, "colour, last shot": last.color}


def ridge_accuracy(x_train, y_train, x_test, y_test, alpha: float = 10.0) -> float:
  """One-vs-rest ridge regression on standardised features (dual form: few samples)."""
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  a, b = (x_train - mean) / std, (x_test - mean) / std
  classes = sorted(set(y_train) | set(y_test))
  onehot = np.eye(len(classes))[[classes.index(v) for v in y_train]]
  w = a.T @ np.linalg.solve(a @ a.T + alpha * np.eye(len(a)), onehot)
  return float(np.mean(np.argmax(b @ w, 1) == np.array([classes.index(v) for v in y_test])))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir", help="a finished `longvid run` on the synthetic source")
  p.add_argument("--videos", type=int, default=240, help="training videos; 3/4 fit, 1/4 score")
  args = p.parse_args(argv)
  pred = Predictor(args.workdir)
  data = pred.config.data
  strides = tuple(pred.config.model.reducer.args.get("strides", (4, 4, 4)))

  def tokens(params, frames):
    def f(m: VideoLLM):
      feats = m.features(frames)
      visual, red = m.visual_embeds(feats)
      return avgpool3d(feats, strides), red.tokens, visual
    return nn.apply(f, pred.model)({"params": params})

  tokens = jax.jit(tokens)
  rows = {k: [] for k in POINTS}
  labels: dict[str, list[str]] = {}
  ids = pipeline.split_ids(data, "train")[:args.videos]
  for vid in ids:
    spec = pipeline.video_spec(data, int(vid))
    frames = synthetic.render(spec, pred.size, pipeline.synthetic_frames(data, spec))
    with pred._ctx():  # pylint: disable=protected-access
      out = tokens(pred.params, jnp.asarray(frames[None], jnp.float32) / 255.0)
    for k, v in zip(POINTS, out):
      rows[k].append(np.asarray(v, np.float32).reshape(-1))
    for k, v in _labels(spec).items():
      labels.setdefault(k, []).append(v)
  cut = len(ids) * 3 // 4
  print(f"{len(ids)} videos ({cut} fit, {len(ids) - cut} scored); accuracy per question")
  print("| tokens | dims | " + " | ".join(labels) + " |")
  print("|---|---:|" + "---:|" * len(labels))
  for k in POINTS:
    x = np.stack(rows[k])
    accs = [ridge_accuracy(x[:cut], y[:cut], x[cut:], y[cut:])
            for y in (labels[q] for q in labels)]
    print(f"| {k} | {x.shape[1]} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
  chance = [1 / len(set(v)) for v in labels.values()]
  print("| chance | | " + " | ".join(f"{c:.2f}" for c in chance) + " |")


if __name__ == "__main__":
  main()
