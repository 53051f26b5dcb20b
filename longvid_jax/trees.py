"""Param-tree checks shared by model building and every checkpoint format: one wording for a
checkpoint that does not fit, naming each missing, extra or wrongly shaped entry."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def strip_boxes(tree):
  """Drop the logical-axis boxes without applying sharding constraints (safe outside jit)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                      if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_shapes(module: nn.Module, *example, **kwargs) -> dict:
  """The unboxed param tree (ShapeDtypeStructs) `module.init(key, *example)` would make,
  without allocating it."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *example, **kwargs))
  return strip_boxes(shapes["params"])


def flat(tree: Mapping) -> dict[str, Any]:
  return traverse_util.flatten_dict(strip_boxes(dict(tree)), sep="/")


def fit_problems(got: Mapping[str, Any], want: Mapping[str, Any],
                 where: Mapping[str, str] | None = None) -> list[str]:
  """Flat path → array (or shape) `got` against flat path → array (or shape) `want`.
  `where` names each path's origin (e.g. a tensor in a file) for the messages."""
  where = where or {}
  shape = lambda x: tuple(x) if isinstance(x, tuple) else tuple(np.shape(x))  # noqa: E731
  out = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
  out += [f"unexpected {where.get(k, k)}" for k in sorted(got.keys() - want.keys())]
  for k in sorted(want.keys() & got.keys()):
    if shape(got[k]) != shape(want[k]):
      name = f"{where[k]} has shape {shape(got[k])} (as {k})" if k in where else (
          f"{k}: shape {shape(got[k])}")
      out.append(f"{name} but the model needs {shape(want[k])}")
  return out


def check_fit(got: Mapping[str, Any], want: Mapping[str, Any], source: str,
              where: Mapping[str, str] | None = None, limit: int = 12) -> None:
  """Raise one ValueError listing what `fit_problems` finds (the first `limit` of them)."""
  problems = fit_problems(got, want, where)
  if problems:
    raise ValueError(f"{source} does not fit the model: " + "; ".join(problems[:limit])
                     + (" ..." if len(problems) > limit else ""))
