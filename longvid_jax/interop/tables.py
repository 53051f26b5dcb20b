"""Table-driven checkpoint conversion: one list of `Rule`s per model family.

A rule pairs a flattened path in our params (`layers_{i}/self_attn/q_proj/kernel`) with a tensor
name in the other format (`model.layers.{i}.self_attn.q_proj.weight`) and optional hooks that
reshape or permute the array on the way in and out. Conversions fail loudly on any tensor that no
rule claims and on any parameter that no tensor fills.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from longvid_jax import trees

Hook = Callable[[np.ndarray, Any], np.ndarray]


def identity(x: np.ndarray, cfg: Any) -> np.ndarray:
  del cfg
  return x


def transpose(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Linear weight[out,in] ↔ flax Dense kernel[in,out]."""
  del cfg
  return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str
  theirs: str
  to_ours: Hook = identity
  to_theirs: Hook = identity


def _regex(pattern: str) -> re.Pattern:
  return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _match(name: str, rules: Iterable[Rule], side: str):
  for rule in rules:
    m = _regex(getattr(rule, side)).match(name)
    if m:
      return rule, m.groupdict().get("i")
  return None, None


def to_ours(tensors: Mapping[str, np.ndarray], rules: list[Rule], cfg: Any = None,
            ignore: Iterable[str] = ()) -> dict:
  """Foreign flat tensors → our nested params dict. `ignore` wins over the rules (a tied
  checkpoint's copy of the embedding as lm_head.weight is dropped, not loaded)."""
  skip = [re.compile(p) for p in ignore]
  flat, unclaimed = {}, []
  for name in tensors:
    if any(p.search(name) for p in skip):
      continue
    rule, i = _match(name, rules, "theirs")
    if rule is None:
      unclaimed.append(name)
      continue
    value = tensors[name]
    ours = rule.ours.replace("{i}", i) if i is not None else rule.ours
    flat[ours] = rule.to_ours(np.asarray(value), cfg)
  if unclaimed:
    raise ValueError(f"no conversion rule for tensors: {', '.join(sorted(unclaimed)[:10])}"
                     f"{' ...' if len(unclaimed) > 10 else ''}")
  return traverse_util.unflatten_dict(flat, sep="/")


def to_theirs(params: Mapping, rules: list[Rule], cfg: Any = None) -> dict[str, np.ndarray]:
  """Our nested params → foreign flat tensors."""
  out, unclaimed = {}, []
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    rule, i = _match(path, rules, "ours")
    if rule is None:
      unclaimed.append(path)
      continue
    name = rule.theirs.replace("{i}", i) if i is not None else rule.theirs
    out[name] = rule.to_theirs(np.asarray(value), cfg)
  if unclaimed:
    raise ValueError(f"no conversion rule for params: {', '.join(sorted(unclaimed)[:10])}")
  return out


def from_state_dict(state: Mapping[str, Any], rules: list[Rule], expected: Mapping,
                    ignore: Iterable[str] = ()) -> dict:
  """A PyTorch state dict (tensors or arrays) → our params, checked against `expected`."""
  arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in state.items()}
  params = to_ours(arrays, rules, ignore=ignore)
  check_complete(params, expected)
  return params


def check_complete(params: Mapping, expected: Mapping) -> None:
  """Raise naming every missing, extra or wrongly-shaped parameter."""
  trees.check_fit(trees.flat(params), trees.flat(expected), "checkpoint")
