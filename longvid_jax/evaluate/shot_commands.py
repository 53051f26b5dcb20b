"""`longvid shots` and `longvid sample`: shot boundaries and frame selection for one video (the
content samplers choose with a trained run's encoder, so `sample` can open a run)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

PROGRESS_MIN_FRAMES = 1000  # show a progress bar from this length on


def register(subparsers) -> None:
  p = subparsers.add_parser("shots", help="per-frame shot-boundary probabilities and scenes")
  p.add_argument("video")
  p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
  _detector_args(p)
  p.set_defaults(func=shots_command)

  from longvid_jax.sampling.samplers import SAMPLERS
  p = subparsers.add_parser("sample", help="choose K frames of a video (adaptive or baseline)")
  p.add_argument("video")
  p.add_argument("--k", type=int, required=True, help="frame budget")
  p.add_argument("--method", default="avs", choices=SAMPLERS.names())
  p.add_argument("--nms-window", type=int, default=5, help="avs: NMS half-window in frames")
  p.add_argument("--rate", type=int, default=3, help="multirate: frames per clip")
  p.add_argument("--r", type=int, default=2, help="fila: supplements per scene")
  p.add_argument("--similarity", type=float, default=0.83, help="longvu: redundancy threshold")
  p.add_argument("--run", help="fila / longvu: the trained run whose vision encoder describes "
                 "the frames (they choose by the model's own features)")
  p.add_argument("--json", action="store_true", help="print {indices, timestamps} as JSON")
  p.add_argument("--plot", metavar="PNG", help="draw the score curve and picked thumbnails")
  _detector_args(p)
  p.set_defaults(func=sample_command)


def _detector_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--threshold", type=float, default=0.5, help="shot-boundary threshold")
  p.add_argument("--mode", default="exact", choices=["exact", "fast"],
                 help="exact: the original's windows; fast: longer windows, ~1.5x less work")
  p.add_argument("--weights", help="TransNetV2 weights (.pth or converted .safetensors); "
                 "default: the released weights")
  p.add_argument("--batch-windows", type=int, default=4)


def _detect(args):
  from longvid_jax.data import shots, video
  n = video.probe(args.video).num_frames
  return shots.predict(args.video, weights=args.weights, mode=args.mode,
                       progress=n >= PROGRESS_MIN_FRAMES, batch_windows=args.batch_windows)


def _fail(err: Exception, path: str) -> int:
  """Every error names the video, also those raised where the path is not known."""
  msg = str(err)
  print(f"error: {msg if path in msg else f'{path}: {msg}'}", file=sys.stderr)
  return 2


def shots_command(args) -> int:
  try:
    pred = _detect(args)
  except (FileNotFoundError, ValueError) as e:
    return _fail(e, args.video)
  scenes = pred.scenes(args.threshold)
  ts = pred.timestamps
  if args.json:
    json.dump({"num_frames": len(pred.single), "threshold": args.threshold,
               "single": [round(float(x), 6) for x in pred.single],
               "many": [round(float(x), 6) for x in pred.many],
               "timestamps": [round(float(x), 6) for x in ts],
               "scenes": scenes.tolist(),
               "scene_times": [[float(ts[a]), float(ts[b])] for a, b in scenes]}, sys.stdout)
    print()
    return 0
  print("frame\ttime_s\tsingle\tmany")
  for i, (t, s, m) in enumerate(zip(ts, pred.single, pred.many)):
    print(f"{i}\t{t:.3f}\t{s:.4f}\t{m:.4f}")
  print(f"\n{len(scenes)} scenes at threshold {args.threshold}:")
  for j, (a, b) in enumerate(scenes):
    print(f"scene {j}: frames {a}-{b}  ({ts[a]:.3f}s - {ts[b]:.3f}s)")
  return 0


def _describer(run_path: str | None, method: str):
  if not run_path:
    raise ValueError(f"--method {method} picks frames by a model's vision features: name the "
                     "trained run with --run RUN")
  from longvid_jax import runs  # pylint: disable=g-import-not-at-top
  run = runs.open_run(run_path)
  s = runs.setup(run.config, mesh=runs.single_device_mesh())
  return s.describer(s.load_params(run.params_dir, as_saved=True))


def sample_command(args) -> int:
  from longvid_jax.data import video
  from longvid_jax.data.video import VideoReader
  from longvid_jax.sampling.samplers import SAMPLERS, shot_start_scores
  options = {"avs": {"window": args.nms_window, "threshold": args.threshold},
             "multirate": {"rate": args.rate}, "fila": {"r": args.r},
             "longvu": {"threshold": args.similarity}}.get(args.method, {})
  try:
    sampler = SAMPLERS.get(args.method)(**options)
    with VideoReader(args.video) as reader:
      n = reader.info.num_frames
      pred = _detect(args) if ("scores" in sampler.needs or args.plot) else None
      scores = shot_start_scores(pred.single) if pred is not None else None
      feats = None
      if "features" in sampler.needs and n > args.k:
        describe = _describer(args.run, args.method)
        size = describe.image_size
        feats = describe(video.video_identity(args.video), np.arange(n),
                         lambda idx: reader.read(idx, size=(size, size)).frames)
      sel = sampler(args.k, num_frames=n, scores=scores, features=feats)
      idx = sel.indices[sel.valid]
      stamps = reader.read(idx, size=(16, 16)).timestamps  # frame-exact times
      if args.plot:
        _plot(args.plot, reader, pred, idx, args)
  except (FileNotFoundError, ValueError, KeyError) as e:
    return _fail(e, args.video)
  if args.json:
    json.dump({"method": args.method, "k": args.k, "num_frames": n,
               "indices": idx.tolist(), "timestamps": [round(float(t), 6) for t in stamps]},
              sys.stdout)
    print()
  else:
    print(f"{args.method}: {len(idx)} of {n} frames")
    for i, t in zip(idx, stamps):
      print(f"{i}\t{t:.3f}s")
  return 0


def _plot(path: str, reader, pred, idx: np.ndarray, args) -> None:
  """Score curve with picks marked, and thumbnails of uniform vs the chosen method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from longvid_jax.sampling.samplers import SAMPLERS

  info = reader.info
  uni = SAMPLERS.get("uniform")()(args.k, num_frames=info.num_frames)
  uni_idx = uni.indices[uni.valid]
  shown = 12  # thumbnails per row
  pick = lambda a: a[np.unique(np.linspace(0, len(a) - 1, min(shown, len(a))).round().astype(int))]
  tw = 96
  th = max(1, round(tw * info.height / max(info.width, 1)))
  rows = [("uniform", pick(uni_idx)), (args.method, pick(idx))]

  fig = plt.figure(figsize=(14, 5.2))
  grid = fig.add_gridspec(3, shown, height_ratios=[2.2, 1, 1])
  ax = fig.add_subplot(grid[0, :])
  ax.plot(np.arange(len(pred.single)), pred.single, lw=0.8, color="0.3", label="P(shot boundary)")
  ax.axhline(args.threshold, color="0.6", ls=":", lw=0.8)
  ax.vlines(uni_idx, 1.02, 1.08, color="tab:blue", lw=0.8, label="uniform")
  ax.vlines(idx, -0.08, -0.02, color="tab:red", lw=0.8, label=args.method)
  ax.set_xlim(0, len(pred.single) - 1)
  ax.set_ylim(-0.12, 1.12)
  ax.set_xlabel("frame")
  ax.legend(loc="upper right", fontsize=8, ncol=3)
  ax.set_title(f"{info.path.rsplit('/', 1)[-1]}: {info.num_frames} frames, k={args.k}")
  for r, (name, ids) in enumerate(rows, start=1):
    thumbs = reader.read(ids, size=(tw, th))
    for c in range(shown):
      a = fig.add_subplot(grid[r, c])
      a.axis("off")
      if c < len(ids):
        a.imshow(thumbs.frames[c])
        a.set_title(f"{name} {ids[c]}" if c == 0 else str(ids[c]), fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
