"""GGUF (llama.cpp) checkpoints → our decoder params, dequantised with the `gguf` package.

The config comes from the `{arch}.*` metadata; tensors are dequantised to float32 (any type
`gguf.quants` knows: Q4_0/Q4_1/Q5_x/Q8_0/K-quants/F16/BF16/F32) and renamed by
`llm_tables.GGUF_RULES`, whose hooks undo llama.cpp's interleaved rotary layout for Llama.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from longvid_jax.interop import llm_tables
from longvid_jax.models.llm import LLMConfig

FAMILIES = ("llama", "qwen2", "qwen3")


def _reader(path: pathlib.Path):
  from gguf import GGUFReader  # pylint: disable=g-import-not-at-top
  if not path.exists():
    raise FileNotFoundError(f"GGUF file {path} does not exist")
  try:
    return GGUFReader(str(path))
  except Exception as e:
    raise ValueError(f"{path} is not a readable GGUF file ({e}); it may be truncated or corrupt"
                     ) from None


def _field(reader, key: str, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  try:
    return f.contents()
  except Exception as e:  # a field whose type tag and payload disagree
    raise ValueError(f"GGUF metadata {key} is malformed ({e})") from None


def _f32(x) -> float:
  """GGUF stores floats as float32; recover the decimal the checkpoint was written with
  (9.999999747e-06 → 1e-05)."""
  return float(f"{float(x):.7g}")


def read_config(reader, path: pathlib.Path, compute_dtype: str = "float32") -> LLMConfig:
  try:
    cfg = _read_config(reader, path, compute_dtype)
  except (TypeError, ValueError, ZeroDivisionError, AttributeError, StopIteration) as e:
    msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e or type(e).__name__}"
    raise ValueError(msg if "GGUF" in msg else f"{msg} (malformed GGUF metadata)") from None
  return llm_tables.check_sizes(cfg, f"{path} (GGUF metadata)")


def _read_config(reader, path: pathlib.Path, compute_dtype: str) -> LLMConfig:
  arch = _field(reader, "general.architecture")
  if arch not in FAMILIES:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; expected one of "
                     f"{FAMILIES}")

  def get(key, default=None):
    v = _field(reader, f"{arch}.{key}", default)
    if v is None:
      raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return v

  def positive(key, default=None):
    v = get(key, default)
    if isinstance(v, bool) or int(v) != v or int(v) < 1:
      raise ValueError(f"{path}: GGUF metadata {arch}.{key}={v!r} must be a positive integer")
    return int(v)

  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:  # llama.cpp's form of Llama 3.1+'s llama3 rope scaling
    raise ValueError(f"{path}: per-dimension rope frequency factors (rope_freqs.weight, as "
                     "Llama 3.1+ GGUFs store llama3 rope scaling) are not supported in GGUF; "
                     "import the Hugging Face checkpoint, whose config states rope_scaling")
  scaling = _field(reader, f"{arch}.rope.scaling.type")
  rope_scaling = {}
  if scaling in ("linear", "yarn"):
    factor = _f32(get("rope.scaling.factor"))
    rope_scaling = {"rope_type": scaling, "factor": factor}
    if scaling == "yarn":
      rope_scaling["original_max_position_embeddings"] = positive(
          "rope.scaling.original_context_length")
  elif scaling not in (None, "none"):
    raise ValueError(f"{path}: rope scaling {scaling!r} is not supported; GGUF import reads "
                     "none, linear and yarn")

  hidden, heads = positive("embedding_length"), positive("attention.head_count")
  head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  vocab = _field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
  if vocab is None:
    vocab = next(t.shape[1] for t in reader.tensors if t.name == "token_embd.weight")
  return LLMConfig(
      vocab_size=int(vocab), hidden_size=hidden, intermediate_size=positive("feed_forward_length"),
      num_layers=positive("block_count"), num_heads=heads,
      num_kv_heads=positive("attention.head_count_kv", heads),
      head_dim=None if head_dim == hidden // heads else head_dim,
      rope_theta=_f32(get("rope.freq_base", 10000.0)),
      rms_eps=_f32(get("attention.layer_norm_rms_epsilon")),
      tie_embeddings="output.weight" not in names, qkv_bias=arch == "qwen2",
      qk_norm=arch == "qwen3",
      max_position=positive("context_length", 8192), dtype=compute_dtype,
      rope_scaling=rope_scaling)


def read_tensors(reader, path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor dequantised to float32, in NumPy's row-major [out, in] order."""
  from gguf import GGMLQuantizationType  # pylint: disable=g-import-not-at-top
  from gguf.quants import dequantize  # pylint: disable=g-import-not-at-top
  out = {}
  for t in reader.tensors:
    try:
      if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        x = np.asarray(t.data, np.float32)
      else:
        x = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
      raise ValueError(f"{path}: tensor {t.name} has quantisation {t.tensor_type.name}, which "
                       "gguf.quants cannot dequantise") from None
    except (ValueError, TypeError, IndexError) as e:
      raise ValueError(f"{path}: tensor {t.name} cannot be read ({e}); the file is corrupt"
                       ) from None
    shape = tuple(int(d) for d in reversed(t.shape))
    try:
      out[t.name] = np.asarray(x, np.float32).reshape(shape)
    except ValueError:
      raise ValueError(f"{path}: tensor {t.name} holds {np.size(x)} values but its header says "
                       f"shape {shape}; the file is corrupt") from None
  return out


def load_config(file: str | os.PathLike, compute_dtype: str = "float32") -> LLMConfig:
  """The decoder config in a .gguf file's metadata, without reading (or dequantising) tensors."""
  path = pathlib.Path(file).expanduser()
  return read_config(_reader(path), path, compute_dtype)


def load_gguf(file: str | os.PathLike, compute_dtype: str = "float32"):
  """A .gguf file → (params float32, cfg)."""
  path = pathlib.Path(file).expanduser()
  reader = _reader(path)
  cfg = read_config(reader, path, compute_dtype)
  tensors = read_tensors(reader, path)
  params = llm_tables.convert(tensors, llm_tables.GGUF_RULES, cfg, llm_tables.GGUF_IGNORE,
                      source=str(path))
  return params, cfg
