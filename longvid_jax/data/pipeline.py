"""Grain input pipeline for the training stages.

Batch i of a stage is a pure function of (seed, i): the source is shuffled with a fixed seed and
repeated, and per-example randomness comes from Grain's per-index RNG. Resuming at step s reads
the dataset from index s, which is exactly what an uninterrupted run would have read.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from longvid_jax.data import prompts, synthetic

TASKS = ("reconstruction", "caption", "qa", "mix")
SPLITS = ("train", "val", "test")


def split_ids(cfg, split: str) -> np.ndarray:
  """Disjoint video ids per split: val and test take fixed fractions off the end."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: choose one of {SPLITS}")
  n = int(cfg.num_videos)
  n_val = n_test = max(1, int(n * cfg.heldout_fraction))
  bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test),
            "test": (n - n_test, n)}
  lo, hi = bounds[split]
  if hi <= lo:
    raise ValueError(f"data.num_videos={n} leaves no {split} videos; raise num_videos")
  return np.arange(lo, hi)


def video_spec(cfg, video_id: int) -> synthetic.VideoSpec:
  return synthetic.make_spec(int(cfg.seed) * 1_000_003 + int(video_id), cfg.shots_per_video,
                             cfg.frames_per_shot)


def frame_indices(num_frames: int, k: int) -> np.ndarray:
  """k frames at the centres of k equal segments."""
  return np.minimum(((np.arange(k) + 0.5) * num_frames / k).astype(np.int64), num_frames - 1)


def example(cfg, task: str, tok, num_visual: int, video_id: int, rng: np.random.Generator):
  spec = video_spec(cfg, video_id)
  frames = synthetic.render(spec, cfg.image_size, frame_indices(spec.num_frames, cfg.num_frames))
  out = {"frames": frames.astype(np.float32) / 255.0}
  if task == "reconstruction":
    return out
  if task == "mix":
    task = "caption" if rng.random() < 0.5 else "qa"
  if task == "caption":
    question, answer = "Describe the video.", synthetic.caption(spec)
  else:
    qa = synthetic.questions(spec)
    question, answer = qa[rng.integers(len(qa))]
  out.update(prompts.encode_example(tok, question, answer, num_visual, cfg.seq_len))
  return out


def dataset(cfg, task: str, tok, num_visual: int, batch_size: int, seed: int,
            split: str = "train") -> grain.MapDataset:
  """Infinite, batched MapDataset; index i is batch i."""
  if task not in TASKS:
    raise ValueError(f"data task {task!r}: choose one of {TASKS}")
  ids = split_ids(cfg, split)
  ds = grain.MapDataset.source(ids).shuffle(seed=seed).repeat(None)
  ds = ds.random_map(lambda vid, rng: example(cfg, task, tok, num_visual, vid, rng), seed=seed)
  return ds.batch(batch_size, drop_remainder=True)


def iterate(ds: grain.MapDataset, start: int, threads: int = 2) -> Iterator[dict]:
  """Batches start, start+1, ... with background prefetch."""
  return iter(ds[start:].to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)))
