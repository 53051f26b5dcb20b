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


MIN_TEXT_TOKENS = 16  # prompt template + a short answer, next to the visual tokens


def _positive_int(value, what: str, fix: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{what} must be a positive integer, got {value!r}; {fix}")
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Catch bad values before anything compiles; each error is one line saying what to change.

  Needs only the config: the encoder's token grid and the reducer's token count are computed
  from module definitions, without building params.
  """
  from longvid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import stage as stage_lib  # pylint: disable=g-import-not-at-top

  lm_stages = []
  for name in config.recipe:
    if name not in config.stages:
      raise ValueError(f"recipe names stage {name!r} but config.stages has only "
                       f"{', '.join(config.stages.keys())}")
    s = config.stages[name]
    for field in ("steps", "batch_size", "log_every", "checkpoint_every"):
      _positive_int(s[field], f"stages.{name}.{field}", "set it to a value >= 1")
    if not (isinstance(s.lr, (int, float)) and s.lr > 0 and math.isfinite(s.lr)):
      raise ValueError(f"stages.{name}.lr must be a positive number, got {s.lr}")
    if not s.trainable:
      raise ValueError(f"stages.{name}.trainable is empty; name the groups this stage trains")
    if s.get("loss") not in stage_lib.LOSSES:
      raise ValueError(f"stages.{name}.loss={s.get('loss')!r} is unknown; set one of "
                       f"{stage_lib.LOSSES}")
    if s.get("task") not in pipeline.TASKS:
      raise ValueError(f"stages.{name}.task={s.get('task')!r} is unknown; set one of "
                       f"{pipeline.TASKS}")
    if s.loss == "lm" and s.task == "reconstruction":
      raise ValueError(f"stages.{name}: loss 'lm' needs text, but task 'reconstruction' has "
                       "none; set task to caption, qa or mix")
    if s.get("nan_policy", "stop") not in stage_lib.NAN_POLICIES:
      raise ValueError(f"stages.{name}.nan_policy={s.nan_policy!r}; set one of "
                       f"{stage_lib.NAN_POLICIES}")
    if s.loss == "lm":
      lm_stages.append(name)
  d = config.data
  for field in ("num_frames", "image_size", "seq_len", "num_videos"):
    _positive_int(d[field], f"data.{field}", "set it to a value >= 1")
  _positive_int(d.get("qa_turns", 1), "data.qa_turns",
                "set the number of question/answer turns per qa example, 1 or more")
  system = d.get("system_prompt")
  if system is not None and not isinstance(system, str):
    raise ValueError(f"data.system_prompt={system!r}: set a string, or None for the chat "
                     "template's default system turn")
  _validate_sampler(d)
  _validate_eval(config)
  num_visual = _validate_model(config)
  # the field that sets each LM stage's example length → (its value, the stages it sets)
  lengths: dict[str, tuple[int, list[str]]] = {}
  for name in lm_stages:
    own = config.stages[name].get("seq_len")
    if own is None:
      lengths.setdefault("data.seq_len", (d.seq_len, []))[1].append(name)
    else:
      _positive_int(own, f"stages.{name}.seq_len", "set it >= 1, or None for data.seq_len")
      lengths[f"stages.{name}.seq_len"] = (own, [name])
  max_pos = (config.model.llm.get("args") or {}).get("max_position")
  for field, (value, names) in lengths.items():
    need = MIN_TEXT_TOKENS + (num_visual or 0)
    if num_visual is not None and need > value:
      raise ValueError(
          f"{field}={value} cannot hold {num_visual} visual tokens plus at least "
          f"{MIN_TEXT_TOKENS} text tokens (stages {', '.join(names)}); raise {field} to "
          f">= {need}, lower data.num_frames or raise the reducer's strides")
    if max_pos and value > max_pos:
      raise ValueError(f"{field}={value} exceeds the LLM's {max_pos} positions "
                       f"(model.llm.args.max_position); lower {field}")
  _validate_mesh(config)


def _validate_eval(config) -> None:
  """`eval` (optional): the held-out split `longvid run` scores after the last stage."""
  e = config.get("eval")
  if e is None or e.get("split") is None:
    return
  from longvid_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if e.split not in pipeline.SPLITS:
    raise ValueError(f"eval.split={e.split!r}: choose one of {pipeline.SPLITS}, or None to skip "
                     "the held-out evaluation")
  if e.get("videos") is not None:
    _positive_int(e.videos, "eval.videos", "set how many held-out videos to score, or None "
                  "for the whole split")
  if not isinstance(e.get("report"), bool):
    raise ValueError(f"eval.report={e.get('report')!r}: set True or False")


def _validate_sampler(d) -> None:
  """`data.sampler` picks k = `data.num_frames` frames; k may not exceed what a video has."""
  name = d.get("sampler")
  if name is None:
    return
  from longvid_jax.sampling.samplers import SAMPLERS  # pylint: disable=g-import-not-at-top
  if not isinstance(name, str) or name not in SAMPLERS:
    raise ValueError(f"data.sampler {name!r} is unknown; set one of {', '.join(SAMPLERS.names())}")
  if "k" in (d.get("sampler_args") or {}):
    raise ValueError("data.sampler_args.k is not used: the sampler keeps data.num_frames frames; "
                     "remove sampler_args.k and set data.num_frames")
  if d.get("source", "synthetic") == "synthetic":
    have = int(d.shots_per_video) * int(d.frames_per_shot)
    if int(d.num_frames) > have:
      raise ValueError(f"data.num_frames={d.num_frames} exceeds the frame budget of a synthetic "
                       f"video ({have} = shots_per_video x frames_per_shot); lower num_frames or "
                       "raise frames_per_shot")


def _validate_model(config) -> int | None:
  """Registry names, reducer strides and the encoder's input size; returns the visual token
  count (None when the model config is too incomplete to say)."""
  from longvid_jax.models import encoders, reducers  # pylint: disable=g-import-not-at-top
  m = config.get("model")
  if m is None:
    return None
  if m.encoder.name not in encoders.ENCODERS:
    raise ValueError(f"model.encoder.name {m.encoder.name!r} is unknown; set one of "
                     f"{', '.join(encoders.ENCODERS.names())}")
  if m.reducer.name not in reducers.REDUCERS:
    raise ValueError(f"model.reducer.name {m.reducer.name!r} is unknown; set one of "
                     f"{', '.join(reducers.REDUCERS.names())}")
  args = dict(m.reducer.get("args") or {})
  if "strides" in args:
    st = args["strides"]
    if (not isinstance(st, (tuple, list)) or len(st) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in st)):
      raise ValueError(f"model.reducer.args.strides={st!r} must be three positive integers "
                       "(s_t, s_h, s_w), e.g. (4, 4, 4)")
  try:  # the config class alone: no weights are read
    enc = encoders.config(m.encoder.name, m.encoder.get("preset"),
                          **dict(m.encoder.get("args") or {}))
    h, w = enc.grid
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"model.encoder ({m.encoder.name}, preset {m.encoder.get('preset')!r}): "
                     f"{str(e).strip(chr(34) + chr(39))}") from None
  size = getattr(enc, "image_size", None)
  if size is not None and size != config.data.image_size:
    raise ValueError(f"data.image_size={config.data.image_size} but the encoder takes "
                     f"{size}-pixel frames; set data.image_size={size}")
  try:
    reducer = reducers.REDUCERS.get(m.reducer.name)(**args)
    return int(reducer.num_tokens(int(config.data.num_frames), h, w))
  except (TypeError, ValueError) as e:
    raise ValueError(f"model.reducer ({m.reducer.name}) on a {config.data.num_frames}×{h}×{w} "
                     f"token grid: {e}") from None


def _validate_mesh(config) -> None:
  """Mesh sizes against the device count, and batch sizes against the data-parallel size."""
  if config.get("mesh") is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  from longvid_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  try:
    shape = dict(zip(mesh_lib.MESH_AXES, mesh_lib.resolve_shape(config.mesh, jax.device_count())))
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}") from None
  dp = shape["data"] * shape["fsdp"]
  for name in config.recipe:
    bs = config.stages[name].batch_size
    if bs % dp:
      raise ValueError(f"stages.{name}.batch_size={bs} does not split over the {dp} data-parallel "
                       f"devices (mesh data×fsdp); make it a multiple of {dp}")


def stage(**fields) -> ml_collections.ConfigDict:
  """A stage config: shared optimisation defaults, overridden by the stage's own fields."""
  c = ml_collections.ConfigDict(dict(
      steps=2000, batch_size=64, lr=1e-4, warmup_steps=100, weight_decay=0.0, grad_clip=1.0,
      log_every=10, checkpoint_every=500,
      grad_accum=1,  # batches per optimiser update (optax.MultiSteps)
      seq_len=None,  # tokens per example; None: data.seq_len (captions need fewer than QA turns)
      keep_checkpoints=False,  # keep checkpoints/ (train states) once the stage is done
      # non-finite loss or gradients: "stop" raises, "skip" drops that update and goes on
      nan_policy="stop",
      debug_nan_steps=(),  # fault injection: these steps' frames are made NaN
  ))
  c.update(fields)
  return c
