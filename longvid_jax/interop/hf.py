"""Hugging Face checkpoints ↔ our decoder: import from a local directory, hub id or GGUF file;
export a directory that `transformers` loads with `from_pretrained`.

Tensors travel as NumPy (bfloat16 through ml_dtypes), never through torch, so bf16 weights keep
their bits and torch stays an optional dependency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax.interop import llm_tables
from longvid_jax.interop import tables
from longvid_jax.models import llm as llm_lib
from longvid_jax.models.llm import DecoderLM, LLMConfig

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"


def expected_shapes(cfg: LLMConfig) -> dict[str, tuple[int, ...]]:
  """Flat param path → shape the model needs, without allocating params."""
  model = DecoderLM(dataclasses.replace(cfg, dtype="float32"))

  def init(mdl, ids):
    return mdl(mdl.embed(ids), jnp.zeros_like(ids), jnp.ones_like(ids))

  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32),
                                             method=init))
  flat = traverse_util.flatten_dict(shapes["params"], sep="/")
  return {k: tuple(getattr(v, "value", v).shape) for k, v in flat.items()}


def check_params(flat: Mapping[str, Any], cfg: LLMConfig, where: Mapping[str, str] | None = None,
                 source: str = "checkpoint") -> None:
  """Raise one error listing every missing, extra or wrongly-shaped param, naming the file
  (and foreign tensor name) each one came from."""
  want = expected_shapes(cfg)
  where = where or {}
  problems = [f"missing {k}" for k in sorted(want.keys() - flat.keys())]
  problems += [f"unexpected {where.get(k, k)}" for k in sorted(flat.keys() - want.keys())]
  problems += [f"{where.get(k, k)} has shape {tuple(np.shape(flat[k]))} (as {k}) but the config "
               f"needs {want[k]}" for k in sorted(want.keys() & flat.keys())
               if tuple(np.shape(flat[k])) != want[k]]
  if problems:
    raise ValueError(f"{source} does not fit the model config: " + "; ".join(problems[:12])
                     + (" ..." if len(problems) > 12 else ""))


def convert(tensors: Mapping[str, np.ndarray], rules, cfg: LLMConfig, ignore=(),
            files: Mapping[str, str] | None = None, source: str = "checkpoint") -> dict:
  """Foreign tensors → our nested params, checked against the config's shapes."""
  try:
    params = tables.to_ours(tensors, rules, cfg, ignore=ignore)
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None
  flat = traverse_util.flatten_dict(params, sep="/")
  files = files or {}
  where = {}
  for name in tensors:
    rule, i = tables._match(name, rules, "theirs")  # pylint: disable=protected-access
    if rule is not None:
      ours = rule.ours.replace("{i}", i) if i is not None else rule.ours
      where[ours] = f"tensor {name!r} in {files.get(name, source)}"
  check_params(flat, cfg, where, source)
  return params


# --- reading -------------------------------------------------------------------------------------


def _resolve(source: str | os.PathLike) -> pathlib.Path:
  """A local directory as is; anything else is taken as a hub id and downloaded."""
  path = pathlib.Path(source).expanduser()
  if path.is_dir():
    return path
  if path.exists():
    raise ValueError(f"{path} is a file; pass the checkpoint directory (or a .gguf file)")
  if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
    raise FileNotFoundError(f"no checkpoint directory at {path}, and {str(source)!r} is not a "
                            "hub id of the form 'org/name'")
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  try:
    return pathlib.Path(snapshot_download(
        str(source), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken",
                                     "*.jinja"]))
  except Exception as e:  # network, auth, missing repo: all say the same to the user
    raise FileNotFoundError(f"could not download {source!r} from the Hugging Face hub ({e}); "
                            "pass a local directory instead") from e


def check_sizes(cfg: LLMConfig, where: str) -> LLMConfig:
  """Refuse sizes no checkpoint can have (zero, negative, non-integer, non-finite), so a
  hostile or broken config fails here, naming its file, rather than deep inside the model."""
  for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "max_position"):
    v = getattr(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{where}: {field}={v!r} must be a positive integer")
  if cfg.head_dim is not None and (not isinstance(cfg.head_dim, int) or cfg.head_dim < 1):
    raise ValueError(f"{where}: head_dim={cfg.head_dim!r} must be a positive integer")
  for field in ("rope_theta", "rms_eps"):
    v = getattr(cfg, field)
    if not (isinstance(v, float) and math.isfinite(v) and v > 0):
      raise ValueError(f"{where}: {field}={v!r} must be a positive finite number")
  return cfg


def read_config(path: pathlib.Path, dtype: str = "float32") -> LLMConfig:
  file = path / "config.json"
  if not file.exists():
    raise FileNotFoundError(f"{file} is missing; a Hugging Face checkpoint directory needs one")
  try:
    c = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}") from None
  if not isinstance(c, dict):
    raise ValueError(f"{file} must hold a JSON object, not {type(c).__name__}")
  archs = c.get("architectures") or []
  known = {"Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM"}
  if not isinstance(archs, list):
    raise ValueError(f"{file}: 'architectures' must be a list of class names, got {archs!r}")
  if archs and not set(map(str, archs)) & known:
    raise ValueError(f"{file}: architecture {archs} is not supported; this importer reads "
                     f"{sorted(known)}")
  try:
    cfg = LLMConfig.from_hf(c, dtype=dtype)
  except KeyError as e:
    raise ValueError(f"{file}: missing field {e}") from None
  except (ValueError, TypeError, ZeroDivisionError) as e:
    raise ValueError(f"{file}: {e}") from None
  return check_sizes(cfg, str(file))


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
  index = path / SAFETENSORS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index} is not a safetensors index (needs a 'weight_map'): {e}") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) for v in weight_map.values()):
      raise ValueError(f"{index}: 'weight_map' must map tensor names to file names")
    files = []
    for name in sorted(set(weight_map.values())):
      # shards are plain file names next to the index: never a path out of the directory
      if pathlib.PurePath(name).name != name or name in (".", "..") or "\\" in name:
        raise ValueError(f"{index}: shard {name!r} is not a plain file name in {path}")
      files.append(path / name)
  elif (path / SAFETENSORS_FILE).exists():
    files = [path / SAFETENSORS_FILE]
  else:
    raise FileNotFoundError(f"{path} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}; "
                            "only safetensors checkpoints are read (re-save with "
                            "save_pretrained(safe_serialization=True))")
  for f in files:
    if not f.exists():
      raise FileNotFoundError(f"{f} is listed in {SAFETENSORS_INDEX} but missing")
  return files


def read_safetensors(files: list[pathlib.Path]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors as NumPy (bf16 via ml_dtypes) plus the file each came from."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  tensors, origin = {}, {}
  for f in files:
    try:
      with safe_open(str(f), framework="numpy") as st:
        for name in st.keys():
          tensors[name] = st.get_tensor(name)
          origin[name] = str(f)
    except Exception as e:  # SafetensorError is not importable as a stable public name
      raise ValueError(f"{f} is not a readable safetensors file ({e}); it may be truncated or "
                       "corrupt — download or export it again") from None
  for name, x in tensors.items():
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.name != "bfloat16":
      raise ValueError(f"tensor {name!r} in {origin[name]} has dtype {x.dtype}; weights must be "
                       "floating point")
  return tensors, origin


def _cast(params, dtype):
  if dtype is None:
    return params
  return jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)


def load_hf(source: str | os.PathLike, dtype: Any = None,
            compute_dtype: str = "float32") -> tuple[dict, LLMConfig]:
  """A local HF directory or hub id → (params, cfg). Params keep the stored dtype unless
  `dtype` is given."""
  path = _resolve(source)
  cfg = read_config(path, compute_dtype)
  tensors, origin = read_safetensors(_safetensors_files(path))
  params = convert(tensors, llm_tables.HF_RULES, cfg, llm_tables.hf_ignore(cfg), origin,
                   source=str(path))
  return _cast(params, dtype), cfg


def import_llm(source: str | os.PathLike, dtype: Any = None, compute_dtype: str = "float32",
               tokenizer: bool = True):
  """Any supported LLM source → (params, cfg, tokenizer or None).

  `source`: a local HF directory, a hub id, a `.gguf` file, or an offline asset name
  (e.g. `smollm2_135m_instruct_gguf`).
  """
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  src = assets.resolve(source)
  if src.endswith(".gguf"):
    from longvid_jax.interop import gguf as gguf_lib  # pylint: disable=g-import-not-at-top
    params, cfg = gguf_lib.load_gguf(src, compute_dtype=compute_dtype)
    tok = tokenizers.load(src) if tokenizer else None
    return _cast(params, dtype), cfg, tok
  params, cfg = load_hf(src, dtype, compute_dtype)
  path = _resolve(src)
  tok = tokenizers.load(str(path)) if tokenizer and tokenizers.has_hf_files(path) else None
  return params, cfg, tok


# --- writing -------------------------------------------------------------------------------------


def _dtype_name(params) -> str:
  dts = {np.dtype(np.asarray(x).dtype).name for x in jax.tree.leaves(params)}
  if len(dts) != 1:
    raise ValueError(f"params mix dtypes {sorted(dts)}; cast them to one dtype before exporting")
  name = dts.pop()
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"cannot export params of dtype {name}; use float32, bfloat16 or float16")
  return name


def export_llm(params, cfg: LLMConfig, out_dir: str | os.PathLike, tokenizer=None,
               dtype: Any = None) -> pathlib.Path:
  """Write config.json + model.safetensors (+ tokenizer files) for transformers.

  Params keep their dtype (bf16 stays bf16) unless `dtype` is given.
  """
  params = _cast(jax.device_get(llm_lib.unstack_layers(params)), dtype)  # tables name layers_{i}
  cfg = dataclasses.replace(cfg, scan_layers=False)  # the layout the params now have
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  check_params(flat, cfg, source="params")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  dtype_name = _dtype_name(flat)
  tensors = tables.to_theirs(traverse_util.unflatten_dict(flat, sep="/"), llm_tables.HF_RULES, cfg)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
  config = cfg.to_hf()
  config["dtype"] = dtype_name
  gen = {}
  if tokenizer is not None:
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
               pad_token_id=tokenizer.pad_id)
    config.update({k: v for k, v in ids.items() if v is not None})
    stops = list(tokenizer.stop_ids)
    gen = {k: v for k, v in ids.items() if v is not None}
    gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    tokenizer.save(out)
  (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  if gen:
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
  return out


def resize_vocab(params, cfg: LLMConfig, vocab_size: int, seed: int = 0):
  """Grow the embedding (and untied head) to `vocab_size` rows, e.g. after adding `<video>`.

  New rows are the mean embedding plus small noise, so new tokens start near the
  distribution of the trained ones.
  """
  if vocab_size < cfg.vocab_size:
    raise ValueError(f"vocab_size {vocab_size} is smaller than the model's {cfg.vocab_size}")
  if vocab_size == cfg.vocab_size:
    return params, cfg
  rng = np.random.default_rng(seed)
  n = vocab_size - cfg.vocab_size

  def grow(x, axis):
    x = np.asarray(x)
    rows = np.moveaxis(x, axis, 0).astype(np.float32)
    mean, std = rows.mean(0), rows.std(0)
    new = mean + 0.01 * std * rng.standard_normal((n, *rows.shape[1:]))
    return np.concatenate([x, np.moveaxis(new.astype(x.dtype), 0, axis)], axis=axis)

  params = jax.tree.map(lambda x: x, dict(params))
  params["embed_tokens"] = {"embedding": grow(params["embed_tokens"]["embedding"], 0)}
  if not cfg.tie_embeddings:
    params["lm_head"] = {"kernel": grow(params["lm_head"]["kernel"], 1)}
  return params, dataclasses.replace(cfg, vocab_size=vocab_size)
