"""An offline long-video QA benchmark whose answers are known frame by frame.

A video is a few long shots (real footage from the shipped clips, played back slowly enough to
fill the shot, and procedural shots of coloured shapes) plus one short *needle* shot hidden
among them. Every shot is logged in a timeline (frames, seconds, what it shows), so each question
says which frames hold its evidence and an oracle can answer from any chosen subset of frames.

Tasks, all multiple choice with the right answer's position balanced per task:
  needle     the colour of the shape seen only in the short shot
  counting   how many shapes a given shot shows at once
  ordering   whether one shot comes before or after another
  grounding  what is shown at mm:ss
  attribute  the colour of a given shape (the training pipeline's wording)

Everything is a pure function of the seed; `make_benchmark` writes mp4 files and one Record
manifest per split, with no video shared between splits.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import json
import math
import os
import pathlib
from typing import Iterator

import av
import numpy as np

from longvid_jax.data import records, synthetic

# the question kinds of the benchmark (a record's `task`), not training tasks (data/tasks.py)
QUESTION_KINDS = ("needle", "counting", "ordering", "grounding", "attribute")
FOOTAGE = "live-action footage"
CLIP_ASSETS = ("cuts_video",)
CUT_THRESHOLD = 25.0  # mean |Δ| of consecutive 32×32 frames (0-255) that marks a cut in a clip


@dataclasses.dataclass(frozen=True)
class Segment:
  """One segment of the timeline (a shot of `frames` output frames): coloured shapes, or a
  stretch of a real clip. (`synthetic.Shot` is one moving shape inside a demo video.)"""
  frames: int
  kind: str  # "shapes" | "clip"
  role: str = "haystack"  # or "needle"
  shape: str = ""
  color: str = ""
  background: str = ""
  count: int = 0
  phase: float = 0.0  # motion phase, so shots with equal content still differ
  source: str = ""  # clip asset name
  src_start: int = 0  # source frame range [src_start, src_end)
  src_end: int = 0

  def describe(self) -> str:
    if self.kind == "clip":
      return FOOTAGE
    return f"a {self.color} {self.shape} on {self.background}"


@dataclasses.dataclass(frozen=True)
class LongVideo:
  seed: int
  shots: tuple[Segment, ...]
  fps: float
  size: int

  @property
  def num_frames(self) -> int:
    return sum(s.frames for s in self.shots)

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps

  def bounds(self) -> list[tuple[int, int]]:
    """[start, end) output frames of each shot."""
    ends = np.cumsum([s.frames for s in self.shots])
    return [(int(e - s.frames), int(e)) for s, e in zip(self.shots, ends)]

  def cut_scores(self) -> np.ndarray:
    """single[N]: what a perfect shot detector gives (TransNetV2's convention: 1 on the last
    frame of every shot but the final one)."""
    single = np.zeros(self.num_frames, np.float32)
    single[[b - 1 for _, b in self.bounds()[:-1]]] = 1.0
    return single

  def timeline(self) -> list[dict]:
    """What each shot shows and when; the ground truth the oracle reads."""
    out = []
    for shot, (a, b) in zip(self.shots, self.bounds()):
      d = {"start_frame": a, "end_frame": b, "start_s": round(a / self.fps, 3),
           "end_s": round(b / self.fps, 3), "kind": shot.kind, "role": shot.role,
           "description": shot.describe()}
      if shot.kind == "shapes":
        d.update(shape=shot.shape, color=shot.color, background=shot.background,
                 count=shot.count)
      else:
        d.update(source=shot.source, source_frames=[shot.src_start, shot.src_end])
      out.append(d)
    return out


# -- real footage -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _clip_frames(name: str, size: int) -> tuple[np.ndarray, float]:
  """(frames[N,size,size,3], fps) of a shipped clip; decoded once, then kept in the asset
  cache as .npz (decoding thousands of frames costs far more than reading them back)."""
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import video  # pylint: disable=g-import-not-at-top
  cached = assets.cache_dir() / "derived" / f"{name}_{size}px.npz"
  if cached.exists():
    with np.load(cached) as d:
      return d["frames"], float(d["fps"])
  path = assets.asset(name)
  frames, fps = video.read_all(path, size=(size, size)).frames, video.probe(path).fps
  cached.parent.mkdir(parents=True, exist_ok=True)
  tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
  np.savez(tmp, frames=frames, fps=fps)
  tmp.replace(cached)
  return frames, fps


@functools.lru_cache(maxsize=4)
def clip_scenes(name: str) -> np.ndarray:
  """[M,2] source-frame ranges of the clip's cut-free scenes (at least a second long)."""
  small, fps = _clip_frames(name, 32)
  diff = np.abs(np.diff(small.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
  cuts = np.flatnonzero(diff > CUT_THRESHOLD) + 1
  edges = np.concatenate([[0], cuts, [len(small)]])
  trim = 3  # keep clear of fades around a cut
  scenes = np.stack([edges[:-1] + trim, edges[1:] - trim], axis=1)
  return scenes[scenes[:, 1] - scenes[:, 0] >= max(8, round(fps))]


def _clip_indices(shot: Segment, src_fps: float, fps: float) -> np.ndarray:
  """Source frames for each output frame: real speed when the scene is long enough, else
  slowed down to fill the shot (never a cut inside a shot)."""
  span = shot.src_end - shot.src_start
  step = min(src_fps / fps, span / shot.frames)
  return shot.src_start + np.minimum((np.arange(shot.frames) * step).astype(np.int64), span - 1)


# -- procedural shapes --------------------------------------------------------------------------


def _centres(shot: Segment, t: np.ndarray) -> np.ndarray:
  """[len(t), count, 2] centres: one object per quadrant-like cell, each wobbling in place."""
  cells = {1: [(0.5, 0.5)], 2: [(0.5, 0.28), (0.5, 0.72)],
           3: [(0.28, 0.28), (0.28, 0.72), (0.72, 0.5)],
           4: [(0.28, 0.28), (0.28, 0.72), (0.72, 0.28), (0.72, 0.72)]}[shot.count]
  amp = 0.12 if shot.count == 1 else 0.05
  w = 2 * math.pi / 24.0
  ph = shot.phase + np.arange(shot.count)[None, :] * 1.3
  dy = amp * np.sin(w * t[:, None] + ph)
  dx = amp * np.cos(0.7 * w * t[:, None] + ph)
  c = np.asarray(cells, np.float32)
  return np.stack([c[None, :, 0] + dy, c[None, :, 1] + dx], axis=-1)


def _radius(count: int) -> float:
  return 0.22 if count == 1 else 0.13


def render_shot(shot: Segment, size: int, fps: float, local: np.ndarray) -> np.ndarray:
  """frames[len(local),size,size,3] uint8 at the shot's own frame indices `local`."""
  local = np.asarray(local, np.int64)
  if shot.kind == "clip":
    frames, src_fps = _clip_frames(shot.source, size)
    return frames[_clip_indices(shot, src_fps, fps)[local]]
  centres = _centres(shot, local.astype(np.float32))
  return np.stack([synthetic.paint(size, shot.background, shot.shape, shot.color,
                                   [tuple(p) for p in c], _radius(shot.count)) for c in centres])


def render(video: LongVideo, indices: np.ndarray | None = None) -> np.ndarray:
  """frames[N,S,S,3] uint8 at the requested frame indices (all frames by default)."""
  idx = np.arange(video.num_frames) if indices is None else np.asarray(indices, np.int64)
  bounds = video.bounds()
  starts = np.asarray([a for a, _ in bounds])
  which = np.searchsorted(starts, idx, side="right") - 1
  out = np.empty((len(idx), video.size, video.size, 3), np.uint8)
  for s in np.unique(which):
    sel = which == s
    out[sel] = render_shot(video.shots[s], video.size, video.fps, idx[sel] - starts[s])
  return out


def iter_render(video: LongVideo, chunk: int = 256) -> Iterator[np.ndarray]:
  for a in range(0, video.num_frames, chunk):
    yield render(video, np.arange(a, min(a + chunk, video.num_frames)))


def write_mp4(path: str | os.PathLike, chunks, fps: float, size: int) -> None:
  """H.264 at near-lossless quality, one keyframe every two seconds, single-threaded (so the
  bytes are a function of the frames)."""
  with av.open(str(path), "w") as out:
    stream = out.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "16", "preset": "veryfast", "threads": "1",
                      "g": str(max(1, round(2 * fps)))}
    for frames in chunks:
      for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
          out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


# -- video specs --------------------------------------------------------------------------------


def make_video(seed: int, seconds: float = 60.0, fps: float = 4.0, size: int = 64,
               num_shots: int | None = None, needle_seconds: float | None = None) -> LongVideo:
  """A few long shots (real footage and shapes, in random order) and one short needle shot.

  Procedural shots use distinct shapes, so "the triangle" names one shot; the needle uses a
  shape no other shot has.
  """
  rng = np.random.default_rng(seed)
  total = max(16, round(seconds * fps))
  n = int(num_shots or rng.integers(4, 7))
  needle = max(2, round((needle_seconds or min(2.0, 0.05 * seconds)) * fps))
  rest = total - needle
  if rest < 2 * n:
    raise ValueError(f"a {seconds} s video at {fps} fps is too short for {n} shots")
  # shot lengths: a floor of half the average, the rest split at random
  base = rest // (2 * n)
  w = rng.dirichlet(np.full(n, 2.0))
  lengths = base + np.floor(w * (rest - base * n)).astype(int)
  lengths[-1] += rest - lengths.sum()
  # two or three shape shots (ordering needs two; the needle needs a shape left over)
  n_shapes = int(rng.integers(2, min(3, n) + 1))
  kinds = ["shapes"] * n_shapes + ["clip"] * (n - n_shapes)
  rng.shuffle(kinds)
  shapes = list(rng.permutation(synthetic.SHAPES + synthetic.EXTRA_SHAPES))
  scenes = clip_scenes(CLIP_ASSETS[0])
  scene_order = rng.permutation(len(scenes))
  shots, prev_bg = [], None
  for i, (kind, length) in enumerate(zip(kinds, lengths)):
    if kind == "clip":
      a, b = scenes[scene_order[i % len(scenes)]]
      shots.append(Segment(int(length), "clip", source=CLIP_ASSETS[0], src_start=int(a),
                        src_end=int(b)))
      continue
    shots.append(_shape_shot(rng, int(length), shapes.pop(0), prev_bg))
    prev_bg = shots[-1].background
  where = int(rng.integers(1, n))  # never first: a needle is found inside the haystack
  # a background unlike both neighbours', so both of the needle's cuts are plain to see
  near = {s.background for s in shots[where - 1:where + 1] if s.kind == "shapes"}
  shots.insert(where, _shape_shot(rng, needle, shapes.pop(0), near, role="needle", count=1))
  return LongVideo(seed=seed, shots=tuple(shots), fps=float(fps), size=int(size))


def _shape_shot(rng, frames: int, shape: str, avoid, role: str = "haystack",
                count: int | None = None) -> Segment:
  """A shape shot whose background is none of `avoid` (a name, a set of names or None)."""
  avoid = {avoid} if isinstance(avoid, str) else set(avoid or ())
  bgs = [b for b in synthetic.BACKGROUNDS if b not in avoid]
  return Segment(frames, "shapes", role=role, shape=str(shape),
              color=str(rng.choice(list(synthetic.COLORS))), background=str(rng.choice(bgs)),
              count=int(count or rng.integers(1, 5)), phase=float(rng.uniform(0, 2 * math.pi)))


# -- questions ----------------------------------------------------------------------------------


def plural(noun: str) -> str:
  return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def mmss(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 60:02d}:{s % 60:02d}"


def _whole_seconds(a: int, b: int, fps: float) -> tuple[int, int] | None:
  """[first, last + 1) of the whole seconds [s, s + 1) that frames [a, b) cover, or None."""
  first, end = math.ceil(a / fps - 1e-9), math.floor(b / fps + 1e-9)
  return (first, end) if end > first else None


def _pick_distractors(rng, answer: str, pool: list[str], n: int) -> list[str]:
  others = [p for p in dict.fromkeys(pool) if p != answer]
  return [others[i] for i in rng.permutation(len(others))[:n]]


def questions(video: LongVideo, rng: np.random.Generator) -> list[dict]:
  """Per task: question, answer, distractors, the evidence (shot numbers, or (start, end) frame
  ranges) and the query the oracle resolves against the timeline.

  Grounding's evidence is a frame of the asked shot at or before the asked time: from later
  frames alone a viewer cannot tell whether a cut came in between.
  """
  bounds = video.bounds()
  shape_ids = [i for i, s in enumerate(video.shots) if s.kind == "shapes" and s.role != "needle"]
  needle = next(i for i, s in enumerate(video.shots) if s.role == "needle")
  colors = list(synthetic.COLORS)
  out = []
  ns = video.shots[needle]
  out.append(dict(task="needle", question=f"What color is the {ns.shape} that appears briefly?",
                  answer=ns.color, distractors=_pick_distractors(rng, ns.color, colors, 3),
                  evidence=[needle], query={"shape": ns.shape, "ask": "color"}))
  c = video.shots[shape_ids[int(rng.integers(len(shape_ids)))]]
  ci = video.shots.index(c)
  out.append(dict(task="counting",
                  question=f"How many {c.color} {plural(c.shape)} are on screen at the same time?",
                  answer=str(c.count), distractors=[str(k) for k in range(1, 5) if k != c.count],
                  evidence=[ci], query={"shape": c.shape, "ask": "count"}))
  i, j = sorted(rng.choice(shape_ids, 2, replace=False).tolist())
  if rng.random() < 0.5:
    i, j = j, i
  si, sj = video.shots[i], video.shots[j]
  out.append(dict(task="ordering",
                  question=(f"Does the {si.color} {si.shape} appear before or after the "
                            f"{sj.color} {sj.shape}?"),
                  answer="before" if i < j else "after",
                  distractors=["after" if i < j else "before"], evidence=[i, j],
                  query={"shapes": [si.shape, sj.shape], "ask": "order"}))
  # footage is about half of every video; asked about no more often than one option in four,
  # "live-action footage" is not a safe guess
  clips = [i for i, s in enumerate(video.shots) if s.kind == "clip"]
  shapes_any = [i for i, s in enumerate(video.shots) if s.kind == "shapes"]
  # the asked second lies wholly inside the shot: were a cut inside it, "at 00:37" would name
  # two shots
  whole = {i: _whole_seconds(*bounds[i], video.fps) for i in range(len(video.shots))}
  clips_w = [i for i in clips if whole[i]] or clips
  shapes_w = [i for i in shapes_any if whole[i]] or shapes_any
  pool_ids = clips_w if rng.random() < 0.25 else shapes_w
  g = int(pool_ids[int(rng.integers(len(pool_ids)))])
  a, b = bounds[g]
  if whole[g]:
    second = int(rng.integers(*whole[g]))
    frame = max(a, math.ceil(second * video.fps))
  else:  # no shot of the drawn kind holds a whole second (very short videos)
    frame = int(rng.integers(a, b))
  desc = video.shots[g].describe()
  pool = [s.describe() for s in video.shots] + [
      f"a {co} {sh} on {bg}" for co in colors for sh in synthetic.SHAPES + synthetic.EXTRA_SHAPES
      for bg in synthetic.BACKGROUNDS] + [FOOTAGE]
  # distractors from the same video first: they differ from the answer, not from the video
  own = _pick_distractors(rng, desc, [s.describe() for s in video.shots], 3)
  extra = _pick_distractors(rng, desc, [p for p in pool if p not in own], 3 - len(own))
  out.append(dict(task="grounding", question=f"What is shown at {mmss(frame / video.fps)}?",
                  answer=desc, distractors=own + extra, evidence=[(a, frame + 1)],
                  query={"frame": frame, "ask": "describe"}))
  t = video.shots[shape_ids[int(rng.integers(len(shape_ids)))]]
  out.append(dict(task="attribute", question=f"What color is the {t.shape}?", answer=t.color,
                  distractors=_pick_distractors(rng, t.color, colors, 3),
                  evidence=[video.shots.index(t)], query={"shape": t.shape, "ask": "color"}))
  return out


class _Balancer:
  """Puts each task's right answer at positions 0, 1, ..., n-1 in turn."""

  def __init__(self):
    self.seen: dict[tuple[str, int], int] = {}

  def place(self, rng, task: str, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    n = len(distractors) + 1
    key = (task, n)
    pos = self.seen.get(key, 0) % n
    self.seen[key] = self.seen.get(key, 0) + 1
    opts = [distractors[i] for i in rng.permutation(len(distractors))]
    opts.insert(pos, answer)
    return opts, pos


def video_records(video: LongVideo, name: str, path: str, balancer: _Balancer,
                  rng: np.random.Generator, scores: str | None = None,
                  question_sets: int = 1) -> list[records.Record]:
  """Each set asks every task once, drawn anew (another moment, pair or shape); a question
  already asked is dropped, so a video with one needle has one needle question. The first set
  asks the same questions whatever `question_sets` is."""
  timeline = video.timeline()
  bounds = video.bounds()
  out, asked = [], set()
  for j in range(question_sets):
    for q in questions(video, rng):
      if q["question"] in asked:
        continue
      asked.add(q["question"])
      out.append(_record(video, q, f"{name}/{q['task']}" + (f"/{j}" if j else ""), path,
                         balancer, rng, scores, timeline, bounds))
  return out


def _record(video: LongVideo, q: dict, rid: str, path: str, balancer: _Balancer,
            rng: np.random.Generator, scores: str | None, timeline, bounds) -> records.Record:
  options, pos = balancer.place(rng, q["task"], q["answer"], q["distractors"])
  return records.Record(
      id=rid, video=path, scores=scores, turns=((q["question"], q["answer"]),),
      options=tuple(options), answer_index=pos, task=q["task"],
      meta={"fps": video.fps, "num_frames": video.num_frames, "seconds": video.duration,
            "seed": video.seed,
            "evidence": [list(e) if isinstance(e, tuple) else list(bounds[e])
                         for e in q["evidence"]],
            "query": q["query"], "timeline": timeline, "caption": caption(video)})


def caption(video: LongVideo) -> str:
  parts = [f"{s.describe()} from {mmss(t['start_s'])} to {mmss(t['end_s'])}"
           for s, t in zip(video.shots, video.timeline())]
  return "The video shows " + ", then ".join(parts) + "."


# -- the benchmark on disk ----------------------------------------------------------------------


def split_sizes(n: int, heldout: float = 0.2) -> dict[str, int]:
  n_val = n_test = max(1, round(n * heldout))
  if n - n_val - n_test < 1:
    raise ValueError(f"{n} videos leave no training videos; use at least 3")
  return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def make_benchmark(out_dir: str | os.PathLike, num_videos: int = 30, seconds: float = 60.0,
                   max_seconds: float | None = None, fps: float = 4.0, size: int = 64,
                   seed: int = 0, heldout: float = 0.2, splits=records.SPLITS,
                   cut_scores=(), train_question_sets: int = 1,
                   log=print) -> dict[str, pathlib.Path]:
  """Videos under out_dir/videos and one manifest per split; returns the manifests' paths.

  Video i has seed (seed, i) and length uniform in [seconds, max_seconds]; splits take
  consecutive videos (train first), so growing --videos never moves a video between splits.
  Existing mp4 files are reused. The splits named in `cut_scores` get the generator's cuts as
  their records' shot scores, so shot-aware samplers skip the detector on them (training data
  without a detector pass); the others are scored by the detector like any video.
  `train_question_sets` > 1 asks each training video more questions (`video_records`): a model
  then cannot learn a video's five answers by heart. Held-out splits keep one set, so their
  questions do not depend on it.
  """
  if isinstance(train_question_sets, bool) or not isinstance(train_question_sets, int) or \
      train_question_sets < 1:
    raise ValueError(f"train_question_sets={train_question_sets!r}: set a whole number >= 1")
  out = pathlib.Path(out_dir)
  (out / "videos").mkdir(parents=True, exist_ok=True)
  sizes = split_sizes(num_videos, heldout)
  max_seconds = max(seconds, max_seconds or seconds)
  manifests, first = {}, 0
  for split in records.SPLITS:
    ids = range(first, first + sizes[split])
    first += sizes[split]
    if split not in splits:
      continue
    balancer, recs = _Balancer(), []
    for i in ids:
      rng = np.random.default_rng([seed, i])
      length = float(rng.uniform(seconds, max_seconds))
      video = make_video(int(rng.integers(2**31)), length, fps, size)
      name = f"{split}_{i:05d}"
      rel = f"videos/{name}.mp4"
      if not (out / rel).exists():
        tmp = out / f"videos/.{name}.tmp.mp4"
        write_mp4(tmp, iter_render(video), fps, size)
        tmp.replace(out / rel)
      scores = None
      if split in cut_scores:
        scores = f"videos/{name}.cuts.npy"
        if not (out / scores).exists():
          np.save(out / scores, video.cut_scores())
      recs += video_records(video, name, rel, balancer, rng, scores,
                            train_question_sets if split == "train" else 1)
    manifests[split] = out / f"{split}.jsonl"
    records.write_manifest(manifests[split], recs)
    log(f"{split}: {sizes[split]} videos, {len(recs)} questions → {manifests[split]}")
  info = dict(num_videos=num_videos, seconds=seconds, max_seconds=max_seconds, fps=fps,
              size=size, seed=seed, heldout=heldout, tasks=list(QUESTION_KINDS),
              cut_scores=list(cut_scores), train_question_sets=train_question_sets)
  (out / "benchmark.json").write_text(json.dumps(info, indent=2))
  return manifests


# -- the training distribution, held out --------------------------------------------------------


def export_synthetic(data_cfg, split: str, out_dir: str | os.PathLike,
                     limit: int | None = None) -> pathlib.Path:
  """The training pipeline's procedural videos of one split as mp4s and a Record manifest.

  Each of `synthetic.questions` becomes multiple choice over its vocabulary (colours, shapes or
  backgrounds), so a model trained by `longvid run` can be scored on videos it never saw.
  """
  from longvid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  (out / "videos").mkdir(parents=True, exist_ok=True)
  vocab = [list(synthetic.COLORS), list(synthetic.SHAPES), list(synthetic.BACKGROUNDS)]
  ids = pipeline.split_ids(data_cfg, split)[:limit]
  balancer, recs = _Balancer(), []
  for vid in ids:
    spec = pipeline.video_spec(data_cfg, int(vid))
    rel = f"videos/synthetic_{split}_{int(vid):06d}.mp4"
    if not (out / rel).exists():
      frames = synthetic.render(spec, int(data_cfg.image_size))
      write_mp4(out / rel, [frames], spec.fps, int(data_cfg.image_size))
    scores = f"videos/synthetic_{split}_{int(vid):06d}.scores.npy"  # what training sampled with
    if not (out / scores).exists():
      np.save(out / scores, synthetic.cut_scores(spec))
    rng = np.random.default_rng([int(data_cfg.seed), int(vid)])
    for k, (q, a) in enumerate(synthetic.questions(spec)):
      pool = next(v for v in vocab if a in v)
      task = ("synthetic/color" if pool is vocab[0] else
              "synthetic/shape" if pool is vocab[1] else "synthetic/background")
      distractors = _pick_distractors(rng, a, pool, min(3, len(pool) - 1))
      options, pos = balancer.place(rng, task, a, distractors)
      recs.append(records.Record(
          id=f"synthetic_{split}_{int(vid)}/{k}", video=rel, scores=scores, turns=((q, a),),
          options=tuple(options), answer_index=pos, task=task,
          meta={"fps": spec.fps, "num_frames": spec.num_frames,
                "caption": synthetic.caption(spec)}))
  path = out / f"synthetic_{split}.jsonl"
  records.write_manifest(path, recs)
  return path
