"""Name maps between our decoder params and Hugging Face / GGUF tensors, one table per format.

Llama, Qwen2 and Qwen3 share one table: Qwen2's q/k/v biases and Qwen3's q/k norms are rules
that simply find nothing to convert in the other families' checkpoints. Family differences live
in small hooks (GGUF's rotary layout).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax import trees
from longvid_jax.interop import tables
from longvid_jax.interop.tables import Rule, transpose
from longvid_jax.models.llm import DecoderLM, LLMConfig

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")

HF_RULES: list[Rule] = [
    Rule("embed_tokens/embedding", "model.embed_tokens.weight"),
    *[Rule(f"layers_{{i}}/self_attn/{p}/kernel", f"model.layers.{{i}}.self_attn.{p}.weight",
           transpose, transpose) for p in _ATTN],
    *[Rule(f"layers_{{i}}/self_attn/{p}/bias", f"model.layers.{{i}}.self_attn.{p}.bias")
      for p in _ATTN[:3]],
    *[Rule(f"layers_{{i}}/mlp/{p}/kernel", f"model.layers.{{i}}.mlp.{p}.weight",
           transpose, transpose) for p in _MLP],
    *[Rule(f"layers_{{i}}/self_attn/{p}/weight", f"model.layers.{{i}}.self_attn.{p}.weight")
      for p in ("q_norm", "k_norm")],
    Rule("layers_{i}/input_layernorm/weight", "model.layers.{i}.input_layernorm.weight"),
    Rule("layers_{i}/post_attention_layernorm/weight",
         "model.layers.{i}.post_attention_layernorm.weight"),
    Rule("norm/weight", "model.norm.weight"),
    Rule("lm_head/kernel", "lm_head.weight", transpose, transpose),
]


def hf_ignore(cfg) -> list[str]:
  """Tensors some checkpoints carry that are not parameters of the model."""
  ignore = [r"\.rotary_emb\.inv_freq$"]
  if cfg.tie_embeddings:
    ignore.append(r"^lm_head\.weight$")  # a copy of the embedding in some tied checkpoints
  return ignore


# --- GGUF (llama.cpp) ----------------------------------------------------------------------------


def _unpermute(x: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp stores Llama's Q/K rows per head as interleaved rotary pairs (0,h/2,1,h/2+1,...)
  instead of HF's half split; invert that for weight[out,in] or bias[out]."""
  return (x.reshape(heads, x.shape[0] // heads // 2, 2, *x.shape[1:])
          .swapaxes(1, 2).reshape(x.shape))


def _permute(x: np.ndarray, heads: int) -> np.ndarray:
  """HF half-split rows → llama.cpp's interleaved pairs (what its converter writes)."""
  return (x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:])
          .swapaxes(1, 2).reshape(x.shape))


def _rotary_hooks(kind: str):
  """(to_ours, to_theirs) for a Q or K tensor; only the Llama family is stored permuted."""

  def heads(cfg):
    return cfg.num_heads if kind == "q" else cfg.num_kv_heads

  def to_ours(x, cfg):
    if cfg.family == "llama":
      x = _unpermute(x, heads(cfg))
    return np.ascontiguousarray(x.T) if x.ndim == 2 else x

  def to_theirs(x, cfg):
    x = np.ascontiguousarray(x.T) if x.ndim == 2 else x
    return _permute(x, heads(cfg)) if cfg.family == "llama" else x

  return to_ours, to_theirs


_GGUF_LINEAR = {"self_attn/v_proj": "attn_v", "self_attn/o_proj": "attn_output",
                "mlp/gate_proj": "ffn_gate", "mlp/up_proj": "ffn_up", "mlp/down_proj": "ffn_down"}

GGUF_RULES: list[Rule] = [
    Rule("embed_tokens/embedding", "token_embd.weight"),
    Rule("layers_{i}/self_attn/q_proj/kernel", "blk.{i}.attn_q.weight", *_rotary_hooks("q")),
    Rule("layers_{i}/self_attn/k_proj/kernel", "blk.{i}.attn_k.weight", *_rotary_hooks("k")),
    Rule("layers_{i}/self_attn/q_proj/bias", "blk.{i}.attn_q.bias", *_rotary_hooks("q")),
    Rule("layers_{i}/self_attn/k_proj/bias", "blk.{i}.attn_k.bias", *_rotary_hooks("k")),
    Rule("layers_{i}/self_attn/v_proj/bias", "blk.{i}.attn_v.bias"),
    *[Rule(f"layers_{{i}}/{ours}/kernel", f"blk.{{i}}.{theirs}.weight", transpose, transpose)
      for ours, theirs in _GGUF_LINEAR.items()],
    Rule("layers_{i}/self_attn/q_norm/weight", "blk.{i}.attn_q_norm.weight"),
    Rule("layers_{i}/self_attn/k_norm/weight", "blk.{i}.attn_k_norm.weight"),
    Rule("layers_{i}/input_layernorm/weight", "blk.{i}.attn_norm.weight"),
    Rule("layers_{i}/post_attention_layernorm/weight", "blk.{i}.ffn_norm.weight"),
    Rule("norm/weight", "output_norm.weight"),
    Rule("lm_head/kernel", "output.weight", transpose, transpose),
]

GGUF_IGNORE: list[str] = []  # rope_freqs.weight is refused in gguf.read_config, not ignored


# --- checks every LLM format shares --------------------------------------------------------------


def expected_shapes(cfg: LLMConfig) -> dict[str, tuple[int, ...]]:
  """Flat param path → shape the model needs, without allocating params."""
  model = DecoderLM(dataclasses.replace(cfg, dtype="float32"))

  def init(mdl, ids):
    return mdl(mdl.embed(ids), jnp.zeros_like(ids), jnp.ones_like(ids))

  shapes = trees.param_shapes(model, jnp.zeros((1, 1), jnp.int32), method=init)
  return {k: tuple(v.shape) for k, v in trees.flat(shapes).items()}


def check_params(flat: Mapping[str, Any], cfg: LLMConfig, where: Mapping[str, str] | None = None,
                 source: str = "checkpoint") -> None:
  """Raise one error listing every missing, extra or wrongly-shaped param, naming the file
  (and foreign tensor name) each one came from."""
  trees.check_fit(flat, expected_shapes(cfg), source, where)


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
