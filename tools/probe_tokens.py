"""How much of each synthetic video's content a linear probe can read from a run's tokens.

Separates "the information is not in the visual tokens" from "the LLM has not learned to use
it": a ridge classifier per question (background, shape and colour of the first and last shot)
is fitted on the tokens of training videos and scored on held-out ones, at three points of the
data flow:

  pooled   the frozen encoder's grid, avgpool3d'd to the reducer's strides (no training)
  reduced  the trained reducer's output (e.g. SVC latents)
  visual   the projector's output: what the LLM sees

  python tools/probe_tokens.py WORKDIR [--videos 240]

A run on a long-video benchmark manifest (`longvid make-benchmark`) is probed per sampled frame
instead: the kind, colour, shape, count and background of the shot the frame lies in (its
`meta.timeline`), fitted on the train split's videos and scored on the val split's.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from longvid_jax.data import pipeline, records, synthetic
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


FRAME_LABELS = ("kind", "color", "shape", "count", "background")


def frame_labels(rec: records.Record, indices) -> list[tuple[str, ...]]:
  """Per sampled frame: FRAME_LABELS of the timeline shot holding it ("-" where a shot has no
  such field, e.g. the colour of live-action footage)."""
  timeline = rec.meta["timeline"]
  out = []
  for i in np.asarray(indices).tolist():
    shot = next(s for s in timeline if s["start_frame"] <= i < s["end_frame"])
    out.append(tuple(str(shot.get(k, "-")) for k in FRAME_LABELS))
  return out


def _manifest_rows(pred: Predictor, tokens, split: str, videos: int):
  """(rows per point [frames, dims], labels per frame) of the first `videos` videos of a split."""
  rows = {k: [] for k in POINTS}
  labels: list[tuple[str, ...]] = []
  seen: set[str] = set()
  for path in pipeline.manifest_paths(pred.config.data, split):
    for _, rec in records.read_manifest(path):
      if isinstance(rec, ValueError) or rec.video in seen or len(seen) >= videos:
        continue
      seen.add(rec.video)
      clip = pred.clip(rec.video, rec.start, rec.end, scores=rec.scores)
      with pred._ctx():  # pylint: disable=protected-access
        out = tokens(pred.params, jnp.asarray(clip.frames[None], jnp.float32) / 255.0)
      t, steps = len(clip.indices), out[0].shape[1]  # pooled is [1, T', h, w, C]
      for k, v in zip(POINTS, out):  # every point keeps time first: T' equal rows
        v = np.asarray(v, np.float32).reshape(steps, -1)
        rows[k].extend(v[i * steps // t] for i in range(t))  # frame i lies in step i·T'/T
      labels.extend(frame_labels(rec, clip.indices))
  return {k: np.stack(v) for k, v in rows.items()}, labels


def probe_manifest(pred: Predictor, tokens, videos: int) -> None:
  (x_fit, y_fit), (x_score, y_score) = (_manifest_rows(pred, tokens, "train", videos),
                                        _manifest_rows(pred, tokens, "val", max(1, videos // 3)))
  print(f"{len(y_fit)} frames fit (train), {len(y_score)} scored (val); accuracy per label")
  print("| tokens | dims | " + " | ".join(FRAME_LABELS) + " |")
  print("|---|---:|" + "---:|" * len(FRAME_LABELS))
  for k in POINTS:
    accs = [ridge_accuracy(x_fit[k], [y[j] for y in y_fit], x_score[k], [y[j] for y in y_score])
            for j in range(len(FRAME_LABELS))]
    print(f"| {k} | {x_fit[k].shape[1]} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
  majority = [max(np.unique([y[j] for y in y_score], return_counts=True)[1]) / len(y_score)
              for j in range(len(FRAME_LABELS))]
  print("| majority | | " + " | ".join(f"{m:.2f}" for m in majority) + " |")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir",
                 help="a finished `longvid run` (synthetic source or a benchmark manifest)")
  p.add_argument("--videos", type=int, default=240,
                 help="training videos; synthetic: 3/4 fit, 1/4 score; manifest: all fit, a "
                 "third as many val videos score")
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
  if data.source == "manifest":
    probe_manifest(pred, tokens, args.videos)
    return
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
