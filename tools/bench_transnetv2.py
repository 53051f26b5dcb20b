"""Throughput of our TransNetV2 against the PyTorch reference on the same decoded frames.

Both run in this process on the same frames, alternating repeats so machine load hits both
alike; we report frames/s, the ratio ours/reference, and the fraction of this machine's fp32
matmul rate (measured here too) that each reaches. FLOPs per window come from XLA's cost
analysis of the compiled network.

`--command` also times what `longvid shots` does with a whole file: decode and detection
streamed in 500-frame chunks with the next chunk decoding on a thread while this one is scored,
against the same decode and detection taking turns, in whole-video frames/s beside the
network's.

  python tools/bench_transnetv2.py [--frames 1000] [--repeats 3] [--threads 2] [--fast]
  python tools/bench_transnetv2.py --command
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def load_reference():
  from longvid_jax.assets import asset
  spec = importlib.util.spec_from_file_location("transnetv2_reference",
                                                asset("transnetv2_reference"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.TransNetV2(device="cpu")


def window_gflop(detector) -> float:
  from longvid_jax.sampling.transnetv2 import WINDOW
  x = jnp.zeros((1, WINDOW, 27, 48, 3), jnp.uint8)
  from longvid_jax.sampling.transnetv2 import TransNetV2
  compiled = jax.jit(lambda p, x: TransNetV2().apply({"params": p}, x)).lower(
      detector.params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9


def scene_f1(a: np.ndarray, b: np.ndarray, tolerance: int = 2) -> float:
  """F1 of scene boundaries (scene ends) matched within `tolerance` frames."""
  ea, eb = a[:-1, 1], b[:-1, 1]
  if not len(ea) and not len(eb):
    return 1.0
  used, hits = set(), 0
  for e in ea:
    cands = [j for j, f in enumerate(eb) if abs(int(f) - int(e)) <= tolerance and j not in used]
    if cands:
      used.add(cands[0])
      hits += 1
  p = hits / max(len(ea), 1)
  r = hits / max(len(eb), 1)
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--frames", type=int, default=1000, help="frames of the real clip to score")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  ap.add_argument("--batch-windows", type=int, default=4)
  ap.add_argument("--fast", action="store_true", help="also time fast mode against exact mode")
  ap.add_argument("--command", action="store_true",
                  help="also time decode + detection of the whole clip, streamed and in turns")
  ap.add_argument("--fast-frames", type=int, default=0,
                  help="frames for the fast-mode comparison (default: the whole clip)")
  args = ap.parse_args(argv)

  import torch
  from longvid_jax.assets import asset
  from longvid_jax.data.video import read_all
  from longvid_jax.data import shots

  torch.set_num_threads(args.threads)
  video = read_all(asset("cuts_video"), size=(48, 27)).frames
  frames = video[:args.frames]
  n = len(frames)
  ref = load_reference()
  ours = shots.detector(batch_windows=args.batch_windows)
  ours.predict_frames(frames[:100])  # compile outside the timing
  frames_t = torch.from_numpy(frames)

  t_ref, t_ours = [], []
  for _ in range(args.repeats):  # alternate so load changes hit both
    t = time.perf_counter()
    with torch.no_grad():
      r_single, _ = ref.predict_frames(frames_t, quiet=True)
    t_ref.append(time.perf_counter() - t)
    t = time.perf_counter()
    p = ours.predict_frames(frames)
    t_ours.append(time.perf_counter() - t)
  err = float(np.abs(p.single - r_single.numpy()).max())

  peak = matmul_gflops()
  gf_window = window_gflop(ours)
  gf_frame = gf_window / 50  # each window yields 50 frames
  fps_ref, fps_ours = n / min(t_ref), n / min(t_ours)
  out = {
      "frames": n, "device": str(jax.devices()[0]), "torch_threads": args.threads,
      "reference_frames_per_s": round(fps_ref, 2),
      "ours_frames_per_s": round(fps_ours, 2),
      "ratio_ours_over_reference": round(fps_ours / fps_ref, 3),
      "gflop_per_window": round(gf_window, 2), "gflop_per_frame": round(gf_frame, 3),
      "matmul_gflops_per_s": round(peak, 1),
      "reference_fraction_of_matmul_peak": round(fps_ref * gf_frame / peak, 3),
      "ours_fraction_of_matmul_peak": round(fps_ours * gf_frame / peak, 3),
      "max_abs_diff_single": err,
      "all_times_s": {"reference": [round(x, 2) for x in t_ref],
                      "ours": [round(x, 2) for x in t_ours]},
  }
  if args.fast:
    clip = video[:args.fast_frames] if args.fast_frames else video
    fast = shots.detector(mode="fast", batch_windows=args.batch_windows)
    fast.predict_frames(clip[:100])  # compile
    t = time.perf_counter()
    exact_full = ours.predict_frames(clip)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    fast_full = fast.predict_frames(clip)
    t_fast = time.perf_counter() - t
    video = clip
    out["fast"] = {
        "frames": len(video), "exact_frames_per_s": round(len(video) / t_exact, 2),
        "fast_frames_per_s": round(len(video) / t_fast, 2),
        "speedup_over_exact": round(t_exact / t_fast, 3),
        "max_abs_diff_vs_exact": float(np.abs(fast_full.single - exact_full.single).max()),
        "scenes_exact": len(exact_full.scenes()), "scenes_fast": len(fast_full.scenes()),
        "scene_f1_vs_exact": round(scene_f1(fast_full.scenes(), exact_full.scenes()), 4),
    }
  if args.command:
    out["command"] = command_fps(asset("cuts_video"), ours, fps_ours)
  json.dump(out, sys.stdout, indent=2)
  print()
  return 0


def command_fps(path, det, network_fps: float) -> dict:
  """Whole-file frames/s of decode + detection: streamed (as `longvid shots` runs) and taking
  turns (decode a chunk, then score it), each the best of two."""
  from longvid_jax.data import shots, video
  size = (shots.INPUT_HW[1], shots.INPUT_HW[0])
  best = {"streamed": float("inf"), "in_turns": float("inf")}
  n = 0
  for _ in range(2):
    for name in best:
      t = time.perf_counter()
      if name == "streamed":  # what `longvid shots` runs, the shot cache aside
        n = len(shots.predict(path, cache=False, batch_windows=det.batch).single)
      else:
        with video.open_video(path) as r:
          n = len(det.predict_chunks(c.frames for c in r.iter_chunks(shots.CHUNK,
                                                                     size=size)).single)
      best[name] = min(best[name], time.perf_counter() - t)
  return {"frames": n, "streamed_frames_per_s": round(n / best["streamed"], 2),
          "in_turns_frames_per_s": round(n / best["in_turns"], 2),
          "streamed_over_in_turns": round(best["in_turns"] / best["streamed"], 3),
          "network_only_frames_per_s": round(network_fps, 2)}


if __name__ == "__main__":
  raise SystemExit(main())
