"""Config files and overrides.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`, named on the
command line as `path/to/file.py` or `path/to/file.py:arg` (big_vision style: the arg picks a
variant, e.g. `runlocal`). `--set key.path=value` overrides any field; values are parsed as Python
literals when they look like one.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import pathlib
import sys

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not file.exists():
    raise FileNotFoundError(f"config file {file} does not exist")
  name = f"_longvid_config_{abs(hash(str(file.absolute())))}"
  module_spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {file} has no get_config(arg=None) function")
  return module.get_config(arg or None)


def override(config: ml_collections.ConfigDict, assignments: list[str]) -> None:
  for item in assignments:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected key.path=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node, parts = config, key.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise KeyError(f"--set {key}: no field {p!r}; fields here: {', '.join(node.keys())}")
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"--set {key}: no field {parts[-1]!r}; fields here: {', '.join(node.keys())}")
    old = node[parts[-1]]
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[parts[-1]] = value


def validate(config: ml_collections.ConfigDict) -> None:
  """Catch bad values before anything compiles; each error says what to change."""
  for name in config.recipe:
    if name not in config.stages:
      raise ValueError(f"recipe names stage {name!r} but config.stages has only "
                       f"{', '.join(config.stages.keys())}")
    s = config.stages[name]
    for field in ("steps", "batch_size", "log_every", "checkpoint_every"):
      if int(s[field]) < 1:
        raise ValueError(f"stages.{name}.{field} must be >= 1, got {s[field]}")
    if not (s.lr > 0 and math.isfinite(s.lr)):
      raise ValueError(f"stages.{name}.lr must be a positive number, got {s.lr}")
    if not s.trainable:
      raise ValueError(f"stages.{name}.trainable is empty; name the groups this stage trains")
  d = config.data
  for field in ("num_frames", "image_size", "seq_len", "num_videos"):
    if int(d[field]) < 1:
      raise ValueError(f"data.{field} must be >= 1, got {d[field]}")


def stage(**fields) -> ml_collections.ConfigDict:
  """A stage config: shared optimisation defaults, overridden by the stage's own fields."""
  c = ml_collections.ConfigDict(dict(
      steps=2000, batch_size=64, lr=1e-4, warmup_steps=100, weight_decay=0.0, grad_clip=1.0,
      log_every=10, checkpoint_every=500))
  c.update(fields)
  return c
