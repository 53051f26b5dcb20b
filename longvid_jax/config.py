"""Config files and overrides.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`, named on the
command line as `path/to/file.py` or `path/to/file.py:arg` (big_vision style: the arg picks a
variant, e.g. `runlocal`). `--set key.path=value` overrides any field; values are parsed as Python
literals when they look like one.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import pathlib
import sys

import ml_collections


def module(path: str | pathlib.Path):
  """The Python module of a config file (its get_config and whatever else it defines)."""
  file = pathlib.Path(path)
  if not file.exists():
    raise FileNotFoundError(f"config file {file} does not exist")
  name = f"_longvid_config_{abs(hash(str(file.absolute())))}"
  module_spec = importlib.util.spec_from_file_location(name, file)
  mod = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = mod
  module_spec.loader.exec_module(mod)
  if not hasattr(mod, "get_config"):
    raise AttributeError(f"config file {file} has no get_config(arg=None) function")
  return mod


def load(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  return module(path).get_config(arg or None)


def _tuples(x):
  """JSON turned every tuple into a list; configs hold tuples (recipe, strides, trainable)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def from_json(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """A config as the runner writes it (workdir/config.json) or an export's longvid.json, on top
  of the base config (so fields added since the run have their defaults)."""
  path = pathlib.Path(path)
  try:
    values = _tuples(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable config ({e})") from None
  c = base()
  for name, s in (values.get("stages") or {}).items():
    c.stages[name] = merged(stage(), s)
  return merged(c, {k: v for k, v in values.items() if k != "stages"})


def assign(config: ml_collections.ConfigDict, key: str, value, what: str = "--set") -> None:
  """config[key.path] = value; the field must exist, except new options under a module's
  `args` / `sampler_args`. JSON lists become tuples and ints floats where the default says so."""
  node, parts = config, key.split(".")
  for p in parts[:-1]:
    if p not in node:
      raise KeyError(f"{what} {key}: no field {p!r}; fields here: {', '.join(node.keys())}")
    node = node[p]
  free = len(parts) > 1 and parts[-2] in FREE_FORM  # module options: new keys are fine
  stage_data = len(parts) == 4 and parts[0] == "stages" and parts[2] == "data"
  if stage_data:  # a stage's data override: any field of config.data, typed like it
    if parts[-1] not in data():
      raise KeyError(f"{what} {key}: config.data has no field {parts[-1]!r}; fields: "
                     f"{', '.join(data().keys())}")
    old = node.get(parts[-1], data()[parts[-1]])
  elif parts[-1] not in node and not free:
    raise KeyError(f"{what} {key}: no field {parts[-1]!r}; fields here: {', '.join(node.keys())}")
  else:
    old = node.get(parts[-1])
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, ml_collections.ConfigDict) and isinstance(
      value, (dict, ml_collections.ConfigDict)):
    if parts[-1] in FREE_FORM:  # module options: the new set replaces the old one
      node[parts[-1]] = ml_collections.ConfigDict(dict(value))
    else:  # a block: the given fields change, the others keep their values
      for k, v in dict(value).items():
        assign(config, f"{key}.{k}", v, what)
    return
  if isinstance(old, ml_collections.ConfigDict) and not (free or stage_data):
    raise ValueError(f"{what} {key}={value!r}: {key} is a block of fields; set one of them "
                     f"({key}.<field>=...)")
  try:
    node[parts[-1]] = value
  except TypeError:
    raise ValueError(f"{what} {key}={value!r}: {key} holds {_kind(old)}") from None


def override(config: ml_collections.ConfigDict, assignments: list[str]) -> None:
  """`--set key.path=value` items; values are Python literals when they parse as one."""
  for item in assignments:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected key.path=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    assign(config, key, value)


MIN_TEXT_TOKENS = 16  # prompt template + a short answer, next to the visual tokens


def _positive_int(value, what: str, fix: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{what} must be a positive integer, got {value!r}; {fix}")
  return value


CHOICES = ("letters", "text")  # how multiple-choice records are trained and scored

# Fields whose default is None, and what they hold when set.
NULLABLE = {
    "data.manifest": (str, dict, ml_collections.ConfigDict, list, tuple),
    "data.fps": (int, float),
    "data.detector_weights": str, "data.features": str, "data.system_prompt": str,
    "data.encoder_fingerprint": str, "model.encoder.preset": str, "model.encoder.weights": str,
    "model.reducer.weights": str, "model.projector.weights": str, "model.llm.weights": str,
    "model.llm.layers": int,
    "model.init_from": str, "eval.split": str, "eval.videos": int, "sharding_rules": (tuple, list),
    "distributed.coordinator": str, "distributed.num_processes": int,
    "distributed.process_id": int, "stage.seq_len": int,
    "data.max_targets": int,
}
GROUPS = ("encoder", "reducer", "projector", "llm")
SOURCES = ("synthetic", "manifest")
DETECTOR_MODES = ("exact", "fast")


def _kind(default) -> str:
  if isinstance(default, bool):
    return "True or False"
  if isinstance(default, int):
    return "an integer"
  if isinstance(default, float):
    return "a number"
  if isinstance(default, str):
    return "a string"
  if isinstance(default, tuple):
    return "a tuple, e.g. ('a', 'b')"
  return type(default).__name__


def _fits(value, default) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def _check_types(node, ref, prefix: str, nullable_prefix: str) -> None:
  for key, default in ref.items():
    where, nkey = prefix + key, nullable_prefix + key
    if key not in node:
      raise ValueError(f"{where} is missing; start the config from config.base() or "
                       "config.stage()")
    value = node[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ValueError(f"{where}={value!r} must be a block of fields, not a value; set one of "
                         f"its fields instead ({where}.<field>=...)")
      if key not in FREE_FORM:
        _check_types(value, default, where + ".", nkey + ".")
    elif default is None:
      if value is not None and nkey in NULLABLE and not isinstance(value, NULLABLE[nkey]):
        kinds = NULLABLE[nkey] if isinstance(NULLABLE[nkey], tuple) else (NULLABLE[nkey],)
        raise ValueError(f"{where}={value!r} has the wrong type; set a "
                         f"{' or '.join(k.__name__ for k in kinds)}, or None")
    elif value is None and nkey in NULLABLE:  # e.g. eval.split=None skips the evaluation
      continue
    elif not _fits(value, default):
      raise ValueError(f"{where}={value!r} must be {_kind(default)}")


def _at_least(value, low, where: str, fix: str = "", strict: bool = False) -> None:
  if value < low or (strict and value == low):
    rel = ">" if strict else ">="
    raise ValueError(f"{where}={value!r} must be {rel} {low}" + (f"; {fix}" if fix else ""))


def validate_fields(config: ml_collections.ConfigDict) -> None:
  """Types and ranges of every field, from the config alone (no JAX, no files): the first check
  `longvid run` makes, so a bad --set fails in one line before anything starts."""
  recipe = config.get("recipe")
  if not isinstance(recipe, (tuple, list)) or not recipe or not all(
      isinstance(n, str) for n in recipe):
    raise ValueError(f"recipe={recipe!r} must be a non-empty tuple of stage names, e.g. "
                     "('align', 'sft')")
  _check_types(config, base(), "", "")
  for name, s in config.stages.items():
    if not isinstance(s, ml_collections.ConfigDict):
      raise ValueError(f"stages.{name}={s!r} must be a stage block; set its fields instead "
                       f"(stages.{name}.steps=...)")
    _check_types(s, stage(), f"stages.{name}.", "stage.")
    _check_types(stage_data(config, s, name), data(), f"stages.{name}.data.", "data.")
  for name in recipe:
    if name not in config.stages:
      raise ValueError(f"recipe names stage {name!r} but config.stages has only "
                       f"{', '.join(config.stages.keys())}")
    s, w = config.stages[name], f"stages.{name}."
    bad = [g for g in s.trainable if g not in GROUPS]
    if bad:
      raise ValueError(f"{w}trainable names {bad}; the param groups are {', '.join(GROUPS)}")
    _at_least(s.grad_accum, 1, w + "grad_accum", "batches per optimiser update")
    _at_least(s.warmup_steps, 0, w + "warmup_steps")
    _at_least(s.snapshot_every, 0, w + "snapshot_every", "0 turns snapshots off")
    _at_least(s.weight_decay, 0.0, w + "weight_decay")
    _at_least(s.grad_clip, 0.0, w + "grad_clip", strict=True)
  _at_least(config.seed, 0, "seed")
  for d, w in _data_blocks(config):
    _data_ranges(d, w)
  _at_least(config.model.projector.depth, 1, "model.projector.depth")
  if config.model.llm.get("layers") is not None:
    _at_least(config.model.llm.layers, 1, "model.llm.layers")
  if config.eval.videos is not None:
    _at_least(config.eval.videos, 1, "eval.videos", "or None for the whole split")


MODEL_INPUT = ("num_frames", "image_size")  # the model's input shape: one value for every stage


def stage_data(config, s, name: str = "<stage>") -> ml_collections.ConfigDict:
  """config.data with stage `s`'s own data fields and seq_len: what that stage trains on."""
  own = dict(s.get("data") or {})
  fixed = [k for k in own if k in MODEL_INPUT and own[k] != config.data[k]]
  if fixed:
    raise ValueError(f"stages.{name}.data.{fixed[0]}: the model's input ({', '.join(MODEL_INPUT)}) "
                     "is config.data's for every stage; set it there")
  if "seq_len" in own:
    raise ValueError(f"stages.{name}.data.seq_len: a stage sets its example length with "
                     f"stages.{name}.seq_len")
  unknown = [k for k in own if k not in config.data]
  if unknown:
    raise ValueError(f"stages.{name}.data.{unknown[0]}: config.data has no such field; fields: "
                     f"{', '.join(config.data.keys())}")
  if not own and s.get("seq_len") is None:
    return config.data
  # not type-safe: a field may change kind (a manifest path → a mixture); the caller checks
  d = ml_collections.ConfigDict(config.data.to_dict(), type_safe=False)
  for k, v in own.items():
    d[k] = ml_collections.ConfigDict(dict(v)) if isinstance(
        v, (dict, ml_collections.ConfigDict)) else v
  if s.get("seq_len") is not None:
    d.seq_len = s.seq_len
  return d


def _data_blocks(config):
  """(data block, its name in messages): config.data, then each recipe stage that changes it."""
  yield config.data, "data."
  for name in config.recipe:
    s = config.stages.get(name)
    if s is not None and s.get("data"):
      yield stage_data(config, s, name), f"stages.{name}.data."


def _data_ranges(d, w: str) -> None:
  if d.source not in SOURCES:
    raise ValueError(f"{w}source={d.source!r}: choose one of {', '.join(SOURCES)}")
  if d.source == "manifest" and not d.manifest:
    raise ValueError(f"{w}source='manifest' needs {w}manifest (a JSONL path, a pattern with "
                     "{split}, a mapping split → path, or [(path, weight), ...])")
  if isinstance(d.manifest, (list, tuple)):
    for item in d.manifest:
      ok = (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)
            and item[1] > 0)
      if not ok:
        raise ValueError(f"{w}manifest={d.manifest!r}: a mixture lists (path, weight) pairs "
                         "with positive weights, e.g. [('a/{split}.jsonl', 3), ('b.jsonl', 1)]")
  if not 0.0 < d.heldout_fraction < 0.5:
    raise ValueError(f"{w}heldout_fraction={d.heldout_fraction!r} must lie in (0, 0.5): the "
                     "share of videos each of val and test takes")
  if d.detector_mode not in DETECTOR_MODES:
    raise ValueError(f"{w}detector_mode={d.detector_mode!r}: choose one of "
                     f"{', '.join(DETECTOR_MODES)}")
  _at_least(d.decode_timeout, 0.0, f"{w}decode_timeout", "seconds per video", strict=True)
  if d.fps is not None:
    _at_least(d.fps, 0.0, f"{w}fps", "or None to keep every frame", strict=True)
  _at_least(d.folder_fps, 0.0, f"{w}folder_fps", strict=True)
  for field in ("read_threads", "prefetch", "skip_log_every"):
    _at_least(d[field], 1, f"{w}{field}")
  _at_least(d.workers, 0, f"{w}workers")


def validate(config: ml_collections.ConfigDict) -> None:
  """Catch bad values before anything compiles; each error is one line saying what to change.

  Needs only the config: the encoder's token grid and the reducer's token count are computed
  from module definitions, without building params.
  """
  from longvid_jax.data import prompts  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import tasks  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import losses  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import stage as stage_lib  # pylint: disable=g-import-not-at-top

  validate_fields(config)
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
    if s.loss not in losses.LOSSES:
      raise ValueError(f"stages.{name}.loss={s.loss!r} is unknown; set one of "
                       f"{', '.join(losses.LOSSES.names())}")
    if s.task not in tasks.TASKS:
      raise ValueError(f"stages.{name}.task={s.task!r} is unknown; set one of "
                       f"{', '.join(tasks.TASKS.names())}")
    needs_text = losses.LOSSES.get(s.loss).needs_text
    if needs_text and tasks.TASKS.get(s.task).turns is None:
      raise ValueError(f"stages.{name}: loss {s.loss!r} needs text, but task {s.task!r} has "
                       "none; set task to one with text (caption, qa or mix)")
    if s.nan_policy not in stage_lib.NAN_POLICIES:
      raise ValueError(f"stages.{name}.nan_policy={s.nan_policy!r}; set one of "
                       f"{stage_lib.NAN_POLICIES}")
    if needs_text:
      lm_stages.append(name)
  for blk, w in _data_blocks(config):
    for field in ("num_frames", "image_size", "seq_len", "num_videos"):
      _positive_int(blk[field], f"{w}{field}", "set it to a value >= 1")
    _positive_int(blk.qa_turns, f"{w}qa_turns",
                  "set the number of question/answer turns per qa example, 1 or more")
    if blk.choices not in CHOICES:
      raise ValueError(f"{w}choices={blk.choices!r}; set one of {CHOICES}")
    if blk.timestamp_style not in prompts.TIMESTAMP_STYLES:
      raise ValueError(f"{w}timestamp_style={blk.timestamp_style!r}; set one of "
                       f"{prompts.TIMESTAMP_STYLES}")
    if blk.rationale and blk.source != "manifest":
      raise ValueError(f"{w}rationale=True reads each record's evidence; set "
                       f"{w}source='manifest' (the long-video benchmark) or {w}rationale=False")
    if blk.rationale and not (blk.timestamps and blk.timestamp_style == "numbered"):
      raise ValueError(f"{w}rationale=True cites frames by the numbers the prompt gives them; "
                       f"set {w}timestamps=True and {w}timestamp_style='numbered'")
    if blk.get("max_targets") is not None:
      _positive_int(blk.max_targets, f"{w}max_targets",
                    "set the most target tokens an example has (>= 1), or None for all positions")
    system = blk.system_prompt
    if system is not None and not isinstance(system, str):
      raise ValueError(f"{w}system_prompt={system!r}: set a string, or None for the chat "
                       "template's default system turn")
    _validate_sampler(blk, w)
  d = config.data
  _validate_eval(config)
  num_visual = _validate_model(config)
  # the field that sets each LM stage's example length → (its value, the stages it sets)
  lengths: dict[str, tuple[int, list[str]]] = {}
  for name in lm_stages:
    own = config.stages[name].seq_len
    if own is None:
      lengths.setdefault("data.seq_len", (d.seq_len, []))[1].append(name)
    else:
      _positive_int(own, f"stages.{name}.seq_len", "set it >= 1, or None for data.seq_len")
      lengths[f"stages.{name}.seq_len"] = (own, [name])
  max_pos = (config.model.llm.args or {}).get("max_position")
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
  e = config.eval
  if e.split is None:
    return
  from longvid_jax.data.records import SPLITS  # pylint: disable=g-import-not-at-top
  if e.split not in SPLITS:
    raise ValueError(f"eval.split={e.split!r}: choose one of {SPLITS}, or None to skip "
                     "the held-out evaluation")
  if e.videos is not None:
    _positive_int(e.videos, "eval.videos", "set how many held-out videos to score, or None "
                  "for the whole split")
  if not isinstance(e.report, bool):
    raise ValueError(f"eval.report={e.report!r}: set True or False")


def _validate_sampler(d, w: str = "data.") -> None:
  """`data.sampler` picks k = `data.num_frames` frames; k may not exceed what a video has."""
  name = d.sampler
  from longvid_jax.sampling.samplers import SAMPLERS  # pylint: disable=g-import-not-at-top
  if not isinstance(name, str) or name not in SAMPLERS:
    raise ValueError(f"{w}sampler {name!r} is unknown; set one of {', '.join(SAMPLERS.names())}")
  if "k" in (d.sampler_args or {}):
    raise ValueError(f"{w}sampler_args.k is not used: the sampler keeps data.num_frames frames; "
                     "remove sampler_args.k and set data.num_frames")
  if "features" in SAMPLERS.get(name).needs and int(d.workers) > 0 and not d.features:
    raise ValueError(f"{w}sampler={name!r} encodes candidate frames with the run's encoder in "
                     f"the input pipeline's threads, which worker processes cannot share; set "
                     f"{w}workers=0 (threads still prefetch), or read a feature cache "
                     "(data.features)")
  if d.source == "synthetic":
    have = int(d.shots_per_video) * int(d.frames_per_shot)
    if int(d.num_frames) > have:
      raise ValueError(f"{w}num_frames={d.num_frames} exceeds the frame budget of a synthetic "
                       f"video ({have} = shots_per_video x frames_per_shot); lower num_frames or "
                       "raise frames_per_shot")


def _validate_model(config) -> int | None:
  """Registry names, reducer strides and the encoder's input size; returns the visual token
  count (None when the model config is too incomplete to say)."""
  from longvid_jax.models import encoders, reducers  # pylint: disable=g-import-not-at-top
  m = config.model
  if m.encoder.name not in encoders.ENCODERS:
    raise ValueError(f"model.encoder.name {m.encoder.name!r} is unknown; set one of "
                     f"{', '.join(encoders.ENCODERS.names())}")
  if m.reducer.name not in reducers.REDUCERS:
    raise ValueError(f"model.reducer.name {m.reducer.name!r} is unknown; set one of "
                     f"{', '.join(reducers.REDUCERS.names())}")
  args = dict(m.reducer.args or {})
  if "strides" in args:
    st = args["strides"]
    if (not isinstance(st, (tuple, list)) or len(st) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in st)):
      raise ValueError(f"model.reducer.args.strides={st!r} must be three positive integers "
                       "(s_t, s_h, s_w), e.g. (4, 4, 4)")
  try:  # the config class alone: no weights are read
    enc = encoders.config(m.encoder.name, m.encoder.preset, **dict(m.encoder.args or {}))
    h, w = enc.grid
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"model.encoder ({m.encoder.name}, preset {m.encoder.preset!r}): "
                     f"{str(e).strip(chr(34) + chr(39))}") from None
  size = getattr(enc, "image_size", None)
  if size is not None and size != config.data.image_size:
    raise ValueError(f"data.image_size={config.data.image_size} but the encoder takes "
                     f"{size}-pixel frames; set data.image_size={size}")
  try:
    reducer = reducers.REDUCERS.get(m.reducer.name)(**args)
    num_visual = int(reducer.num_tokens(int(config.data.num_frames), h, w))
  except (TypeError, ValueError) as e:
    raise ValueError(f"model.reducer ({m.reducer.name}) on a {config.data.num_frames}×{h}×{w} "
                     f"token grid: {e}") from None
  from longvid_jax.data import prompts  # pylint: disable=g-import-not-at-top
  for blk, where in _data_blocks(config):
    if blk.timestamps and blk.timestamp_style in prompts.PER_FRAME_STYLES:
      if not frames_apart(reducer, int(blk.num_frames), h, w):
        raise ValueError(f"{where}timestamp_style={blk.timestamp_style!r} puts each frame's "
                         "time before "
                         f"its own tokens, but model.reducer ({m.reducer.name}, {args}) mixes "
                         "frames; use one that keeps frames apart (e.g. a temporal stride of "
                         "1), or set "
                         f"{where}timestamp_style='sentence'")
  return num_visual


def frames_apart(reducer, t: int, h: int, w: int) -> bool:
  """Whether the reducer's tokens split into one equal group per frame, in frame order: what
  each frame's own time label (`timestamp_style="interleaved"`) needs."""
  return (not getattr(reducer, "mixes_frames", False)
          and reducer.num_tokens(1, h, w) * t == reducer.num_tokens(t, h, w))


def _validate_mesh(config) -> None:
  """Mesh sizes against the device count, and batch sizes against the data-parallel size."""
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
  """A stage config: every stage field with its default, overridden by the stage's own."""
  c = ml_collections.ConfigDict(dict(
      loss="lm",  # a name in train.losses.LOSSES: "lm" (answer tokens) or "reconstruction"
      task="qa",  # a name in data.tasks.TASKS: what each example asks
      trainable=(),  # param groups this stage updates: encoder, reducer, projector, llm
      steps=2000, batch_size=64, lr=1e-4, warmup_steps=100, weight_decay=0.0, grad_clip=1.0,
      log_every=10, checkpoint_every=500,
      grad_accum=1,  # batches per optimiser update (optax.MultiSteps)
      seq_len=None,  # tokens per example; None: data.seq_len (captions need fewer than QA turns)
      keep_checkpoints=False,  # keep checkpoints/ (train states) once the stage is done
      # params every N steps under snapshots/<step>, kept for learning curves
      # (`longvid eval RUN DATA --curve`); 0: none
      snapshot_every=0,
      # non-finite loss or gradients: "stop" raises, "skip" drops that update and goes on
      nan_policy="stop",
      debug_nan_steps=(),  # fault injection: these steps' frames are made NaN
      # this stage's own data: fields of config.data it changes (e.g. manifest, sampler, source,
      # qa_turns); the rest, and num_frames / image_size (the model's input), stay config.data's
      data={},
  ))
  c.update(fields)
  return c


def data(**fields) -> ml_collections.ConfigDict:
  """The `data` block: every field the pipeline, the clip loader and evaluation read."""
  c = ml_collections.ConfigDict(dict(
      source="synthetic",  # synthetic (rendered on the fly) or manifest (JSONL records)
      # a path, a path with "{split}", a glob, a mapping split → path, or a mixture
      # [(path, weight), ...]: each manifest fills its weight's share of an epoch
      manifest=None,
      # synthetic videos: how many, which fraction goes to val and to test, their shape
      num_videos=1000, heldout_fraction=0.05, seed=0, shots_per_video=8, frames_per_shot=16,
      num_frames=32,  # frames the sampler keeps per video (the model's T)
      image_size=384,  # frame side after resizing; must equal the encoder's input size
      seq_len=2048,  # tokens per example, visual placeholders included
      sampler="uniform",  # a name in sampling.SAMPLERS
      sampler_args={},  # the sampler's options (e.g. window, threshold for avs)
      fps=None,  # resample decoded frames to this rate before sampling; None keeps them all
      folder_fps=1.0,  # frame folders: the rate their images were taken at
      detector_weights=None,  # TransNetV2 weights for samplers that need shot scores
      detector_mode="exact",  # exact (the original's windows) or fast
      timestamps=False,  # tell the LLM each sampled frame's time (mm:ss.d), as timestamp_style says
      # "sentence": "This video samples N frames ... at 00:07.0, ..." after the video's tokens;
      # "interleaved": each frame's time right before its tokens (a reducer that keeps frames apart)
      timestamp_style="sentence",
      system_prompt=None,  # None: the chat template's default system turn
      # also ask the (first) question before the video, so the frames' tokens see what is asked
      question_first=False,
      qa_turns=1,  # question/answer turns per qa example: more turns share one video prefix
      # manifests: the records of one video (and clip) become one example holding all their
      # questions, so qa_turns > 1 trains several of a benchmark's questions per video prefix
      merge_questions=False,
      # multiple-choice records: "letters" trains the lettered question answered by the letter
      # (the usual format of instruction data); "text" the bare question answered by the right
      # option's text, which a small LLM learns far sooner (no letter lookup). Scoring follows.
      choices="letters",
      # target tokens per example at most: the LM head then runs on those positions only, not
      # on every position (on a small LLM the vocabulary head is half of a step); None: all
      max_targets=None,
      # benchmark records with `meta.evidence` (frame ranges): each answer first names the
      # sampled frames showing its evidence ("frames 5, 2: after"); evaluation generates that
      # rationale, then ranks the options after it. Needs timestamp_style="numbered"
      rationale=False,
      strict=False,  # raise on a bad record instead of skipping it
      skip_log_every=100,  # a skip summary every this many bad records
      decode_timeout=120.0,  # seconds before a stuck decode counts as a bad record
      read_threads=2, prefetch=4, workers=0,  # Grain: threads, batches ahead, processes
      features=None,  # a feature-cache folder: batches carry encoder features, not frames
      features_content_hash=False,  # key cache entries by video bytes, not path+mtime
      encoder_fingerprint=None,  # set by the runner; names the encoder the cache belongs to
  ))
  c.update(fields)
  return c


def base() -> ml_collections.ConfigDict:
  """Every config field the code reads, declared once with its default. Recipes start here and
  override; `--set` reaches every field; a run's saved config.json is read on top of it."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.recipe = ()  # stage names, run in order
  c.stages = ml_collections.ConfigDict()  # name → stage(...)
  c.model = ml_collections.ConfigDict(dict(
      encoder=dict(name="siglip", preset=None, args={}, weights=None),
      reducer=dict(name="svc", args={}, weights=None),
      # norm: a LayerNorm on the projector input (see models/projector.py)
      projector=dict(depth=2, norm=False, weights=None),
      # layers: keep only the checkpoint's first N decoder layers (a shallower LLM that trains
      # several times faster, for small budgets); None keeps them all
      llm=dict(args={}, weights=None, layers=None),
      tokenizer="qwen_tiktoken",
      train_encoder=False,
      init_from=None,  # a params checkpoint (`longvid import` writes one) for every group
  ))
  c.data = data()
  # after the last stage `longvid run` scores the final params on the held-out split (split=None
  # skips it): videos=None takes every video of the split; report draws DIR/report.png
  c.eval = ml_collections.ConfigDict(dict(split="test", videos=None, report=True))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None  # None: longvid_jax.parallel.mesh.DEFAULT_RULES
  # multi-process jobs: left unset, TPU pods / SLURM / JAX_* environment variables are detected
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator=None, num_processes=None, process_id=None, auto=False))
  return c


FREE_FORM = ("args", "sampler_args")  # module options: any key may be added


def merged(into: ml_collections.ConfigDict, values) -> ml_collections.ConfigDict:
  """`into` with `values` (a dict or ConfigDict) written over it, recursively; fields `into`
  lacks are added (a stage's block under `stages`, a module's options)."""
  for k, v in dict(values).items():
    if isinstance(v, (dict, ml_collections.ConfigDict)) and isinstance(
        into.get(k), ml_collections.ConfigDict):
      merged(into[k], v)
    elif k in into and into[k] is not None and v is not None and not isinstance(
        v, type(into[k])) and not (isinstance(into[k], float) and isinstance(v, int)):
      del into[k]  # stored with another type than the default's (e.g. a float step count)
      into[k] = v
    else:
      into[k] = v
  return into
