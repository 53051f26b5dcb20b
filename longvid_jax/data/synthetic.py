"""Procedural videos whose contents we know, with captions and questions answerable only from
the frames.

A video is a sequence of shots. Each shot shows one coloured shape moving over a plain
background; the shape, its colour and the background change at every cut, so questions about
"the triangle" or "the first shot" need the right frames, and the text alone gives chance odds.
Everything is a pure function of the seed, so a record is just its seed and can be re-rendered
in any worker.
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 205, 30), "purple": (140, 50, 180), "orange": (240, 130, 20),
}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
# Only the long-video benchmark draws these; `make_spec` keeps to SHAPES so its videos stay put.
EXTRA_SHAPES = ("diamond", "cross")


@dataclasses.dataclass(frozen=True)
class Shot:
  shape: str
  color: str
  background: str
  start: tuple[float, float]  # centre at the first frame, in [0, 1] image units
  velocity: tuple[float, float]  # per frame
  size: float  # radius in image units


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  seed: int
  shots: tuple[Shot, ...]
  frames_per_shot: int
  fps: float = 8.0

  @property
  def num_frames(self) -> int:
    return len(self.shots) * self.frames_per_shot


def make_spec(seed: int, num_shots: int = 4, frames_per_shot: int = 8) -> VideoSpec:
  """Shots with distinct shapes where possible and a new colour and background at every cut."""
  rng = np.random.default_rng(seed)
  shapes = list(rng.permutation(SHAPES))
  shots, prev = [], None
  for i in range(num_shots):
    shape = shapes[i] if i < len(shapes) else str(rng.choice(SHAPES))
    while True:
      color = str(rng.choice(list(COLORS)))
      background = str(rng.choice(list(BACKGROUNDS)))
      if prev is None or (color, background) != (prev.color, prev.background):
        break
    shot = Shot(shape=str(shape), color=color, background=background,
                start=tuple(rng.uniform(0.3, 0.7, 2)), velocity=tuple(rng.uniform(-0.02, 0.02, 2)),
                size=float(rng.uniform(0.15, 0.25)))
    shots.append(shot)
    prev = shot
  return VideoSpec(seed=seed, shots=tuple(shots), frames_per_shot=frames_per_shot)


def _mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float):
  if shape == "circle":
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
  if shape == "square":
    return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
  if shape == "diamond":
    return np.abs(yy - cy) + np.abs(xx - cx) <= r
  if shape == "cross":
    arm = r * 0.35
    return (((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= r)) |
            ((np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= r)))
  if shape != "triangle":
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES + EXTRA_SHAPES}")
  # upward triangle: below the apex, above the base, inside both slanted sides
  return (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.6)


def paint(size: int, background: str, shape: str, color: str,
          centres: list[tuple[float, float]], radius: float) -> np.ndarray:
  """One frame[size,size,3] uint8: several copies of a shape, so counts can be asked about."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  out = np.empty((size, size, 3), np.uint8)
  out[:] = BACKGROUNDS[background]
  for cy, cx in centres:
    out[_mask(shape, yy, xx, cy, cx, radius)] = COLORS[color]
  return out


def render(spec: VideoSpec, size: int = 64, indices: np.ndarray | None = None) -> np.ndarray:
  """frames[T,size,size,3] uint8 for the requested frame indices (all frames by default)."""
  idx = np.arange(spec.num_frames) if indices is None else np.asarray(indices)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  out = np.empty((len(idx), size, size, 3), np.uint8)
  for j, i in enumerate(idx):
    shot = spec.shots[int(i) // spec.frames_per_shot]
    t = int(i) % spec.frames_per_shot
    cy = shot.start[0] + shot.velocity[0] * t
    cx = shot.start[1] + shot.velocity[1] * t
    out[j] = BACKGROUNDS[shot.background]
    out[j][_mask(shot.shape, yy, xx, cy, cx, shot.size)] = COLORS[shot.color]
  return out


def cut_scores(spec: VideoSpec) -> np.ndarray:
  """single[N]: the boundary probabilities a perfect detector would give, in TransNetV2's
  convention (1 on the last frame of every shot but the final one, 0 elsewhere)."""
  single = np.zeros(spec.num_frames, np.float32)
  single[spec.frames_per_shot - 1:spec.num_frames - 1:spec.frames_per_shot] = 1.0
  return single


# Caption examples ask in several ways, so an open question gets one descriptive sentence and
# an end of turn rather than whatever the language model continues with.
CAPTION_PROMPTS = ("Describe the video.", "What happens in the video?",
                   "What is happening in this video?")


def caption(spec: VideoSpec) -> str:
  parts = [f"a {s.color} {s.shape} on {s.background}" for s in spec.shots]
  return "The video shows " + ", then ".join(parts) + "."


def questions(spec: VideoSpec) -> list[tuple[str, str]]:
  """(question, answer) pairs; each answer is one word read off the frames."""
  qa = []
  for s in spec.shots:
    if sum(o.shape == s.shape for o in spec.shots) == 1:
      qa.append((f"What color is the {s.shape}?", s.color))
  qa.append(("What shape is shown first?", spec.shots[0].shape))
  qa.append(("What shape is shown last?", spec.shots[-1].shape))
  qa.append(("What color is the background at the start?", spec.shots[0].background))
  return qa
