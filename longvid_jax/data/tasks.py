"""What a training example asks, by the name a stage's `task` field gives.

A task turns what one video offers (`Material`: its question/answer turns and caption pairs)
into the conversation of one example, or into no text at all (`reconstruction`, for the
autoencoder). Every source (synthetic videos, manifests) builds `Material` the same way, so a new
task is one function here registered in `TASKS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from longvid_jax.registry import Registry

Turns = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Material:
  qa: Sequence[tuple[str, str]]  # question/answer turns
  captions: Sequence[tuple[str, str]] = ()  # (prompt, caption); none: the qa turns serve
  ordered: bool = True  # the qa turns are a conversation: keep its first turns, in order
  kinds: Sequence[str] = ()  # each qa turn's question kind (a benchmark's task), if known


@dataclasses.dataclass(frozen=True)
class Task:
  turns: Callable[[Material, np.random.Generator, int], Turns] | None  # None: frames only


TASKS: Registry[Task] = Registry("data task")


def _qa(m: Material, rng: np.random.Generator, n: int) -> Turns:
  """`n` = `data.qa_turns` turns: several turns share one video prefix, so each training token
  teaches more answers."""
  if m.ordered:
    return list(m.qa[:n])
  order = rng.permutation(len(m.qa)).tolist()
  if m.kinds:  # evenly across kinds: a video's many grounding questions leave room for its needle
    by_kind: dict[str, list[int]] = {}
    for i in order:
      by_kind.setdefault(m.kinds[i], []).append(i)
    queues = list(by_kind.values())  # in the order the shuffle first met each kind
    order = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
  return [m.qa[i] for i in order[:n]]


def _caption(m: Material, rng: np.random.Generator, n: int) -> Turns:
  if not m.captions:
    return _qa(m, rng, n)
  return [m.captions[rng.integers(len(m.captions))]]


def _mix(m: Material, rng: np.random.Generator, n: int) -> Turns:
  """A caption or a question, half and half; a conversation without captions: one of its turns."""
  if not m.captions:
    return [m.qa[int(rng.integers(len(m.qa)))]]
  return _caption(m, rng, n) if rng.random() < 0.5 else _qa(m, rng, n)


TASKS.register("reconstruction")(Task(None))
TASKS.register("caption")(Task(_caption))
TASKS.register("qa")(Task(_qa))
TASKS.register("mix")(Task(_mix))
