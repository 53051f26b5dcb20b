"""Hugging Face checkpoints ↔ our decoder: import from a local directory, hub id or GGUF file;
export a directory that `transformers` loads with `from_pretrained`.

Tensors travel as NumPy (bfloat16 through ml_dtypes), never through torch, so bf16 weights keep
their bits and torch stays an optional dependency.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax.interop import files
from longvid_jax.interop import gguf as gguf_lib
from longvid_jax.interop import llm_tables
from longvid_jax.interop import tables
from longvid_jax.models import llm as llm_lib
from longvid_jax.models.llm import LLMConfig



# --- reading -------------------------------------------------------------------------------------


def read_config(path: pathlib.Path, dtype: str = "float32") -> LLMConfig:
  file, c = path / "config.json", files.read_config(path)
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
  return llm_tables.check_sizes(cfg, str(file))


def _cast(params, dtype):
  if dtype is None:
    return params
  return jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)


def load_hf(source: str | os.PathLike, dtype: Any = None,
            compute_dtype: str = "float32") -> tuple[dict, LLMConfig]:
  """A local HF directory or hub id → (params, cfg). Params keep the stored dtype unless
  `dtype` is given."""
  path = files.model_dir(source)
  cfg = read_config(path, compute_dtype)
  tensors, origin = files.read_safetensors(files.safetensors_files(path))
  params = llm_tables.convert(tensors, llm_tables.HF_RULES, cfg, llm_tables.hf_ignore(cfg),
                              origin, source=str(path))
  return _cast(params, dtype), cfg


def llm_config(source: str | os.PathLike, compute_dtype: str = "float32") -> LLMConfig:
  """The config of any source `import_llm` reads, from its config.json or GGUF metadata alone:
  no weights are read, downloaded or dequantised."""
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  src = assets.resolve(source)
  if src.endswith(".gguf"):
    return gguf_lib.load_config(src, compute_dtype)
  return read_config(files.model_dir(src, ("*.json",)), compute_dtype)


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
    params, cfg = gguf_lib.load_gguf(src, compute_dtype=compute_dtype)
    tok = tokenizers.load(src) if tokenizer else None
    return _cast(params, dtype), cfg, tok
  params, cfg = load_hf(src, dtype, compute_dtype)
  path = files.model_dir(src)
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


DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' and the hub's usual shard size


def export_llm(params, cfg: LLMConfig, out_dir: str | os.PathLike, tokenizer=None,
               dtype: Any = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> pathlib.Path:
  """Write config.json + safetensors (+ tokenizer files) for transformers' `from_pretrained`:
  one model.safetensors, or shards of at most `max_shard_bytes` with their index.

  Params keep their dtype (bf16 stays bf16) unless `dtype` is given.
  """
  params = _cast(jax.device_get(llm_lib.unstack_layers(params)), dtype)  # tables name layers_{i}
  cfg = dataclasses.replace(cfg, scan_layers=False)  # the layout the params now have
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  llm_tables.check_params(flat, cfg, source="params")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  dtype_name = _dtype_name(flat)
  tensors = tables.to_theirs(traverse_util.unflatten_dict(flat, sep="/"), llm_tables.HF_RULES, cfg)
  files.save_sharded(tensors, out, max_shard_bytes)
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
