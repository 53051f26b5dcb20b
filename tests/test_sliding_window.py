"""Qwen2 sliding-window layers against transformers.

Reference: `Qwen2ForCausalLM` with `use_sliding_window`, `sliding_window` 8 and the sliding
layers chosen by `max_window_layers` or an explicit `layer_types`, run with eager attention (the
mask is materialised) and sdpa. Sequences of 40 tokens and 20-token generations run far past the
window. Tolerance: float32 logits within 1e-4 max abs; greedy generation token for token.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers

from longvid_jax.interop import hf
from longvid_jax.models import generate as gen
from longvid_jax.models import llm
from longvid_jax.models.llm import DecoderLM, LLMConfig
from test_llm_parity import (  # pylint: disable=g-bad-import-order
    assert_same_tensors, hf_logits, hf_model, max_diff_on_real, our_logits)
from test_rope_scaling import hf_greedy  # pylint: disable=g-bad-import-order

TOL = 1e-4
WINDOW = 8
FULL, SLIDING = "full_attention", "sliding_attention"

# name → (Qwen2Config window kwargs, the layer types transformers derives from them)
CASES = {
    "max_window_layers_1": (dict(max_window_layers=1), (FULL, SLIDING)),
    "max_window_layers_0": (dict(max_window_layers=0), (SLIDING, SLIDING)),
    "layer_types": (dict(layer_types=[SLIDING, FULL]), (SLIDING, FULL)),
}


def window_model(seed: int = 0, **kw):
  return hf_model("qwen2", seed=seed, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=False, use_sliding_window=True, sliding_window=WINDOW, **kw)


def batch(vocab: int, length: int = 40):
  """Two rows, the second left-padded by 13: the window cuts in for most queries of both."""
  ids = np.random.default_rng(7).integers(0, vocab, (2, length))
  mask = np.ones_like(ids)
  mask[1, :13] = 0
  return ids, mask, np.maximum(mask.cumsum(1) - 1, 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_window_layers_match_transformers(name, tmp_path):
  kw, types = CASES[name]
  ref = window_model(**kw)
  assert tuple(ref.config.layer_types) == types  # the reading of max_window_layers we mirror
  ref.save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in")
  assert cfg.layer_types == types and cfg.sliding_window == WINDOW

  prompt = np.random.default_rng(8).integers(0, cfg.vocab_size, 12).tolist()
  model = DecoderLM(cfg)
  run = lambda prompts: gen.generate_ids(model, params, prompts, max_new_tokens=20,  # noqa: E731
                                         pad_multiple=16)
  ours = run([prompt])[0]
  assert ours == hf_greedy(ref, prompt, 20)
  # Left padding shifts slots, not the distance between real tokens: batching stays invisible.
  assert run([prompt, prompt[:5]]) == [ours, run([prompt[:5]])[0]]

  ids, mask, pos = batch(cfg.vocab_size)
  logits = our_logits(params, cfg, ids, mask, pos)
  full = our_logits(params, dataclasses.replace(cfg, layer_types=()), ids, mask, pos)
  assert np.abs(logits - full).max() > 1e-2  # the window changes the outputs
  for impl in ("eager", "sdpa"):
    ref.config._attn_implementation = impl  # pylint: disable=protected-access
    diff = max_diff_on_real(logits, hf_logits(ref, ids, mask, pos), mask)
    assert diff < TOL, f"{name} ({impl}): max abs logit diff {diff}"

  hf.export_llm(params, cfg, tmp_path / "out")
  assert_same_tensors(tmp_path / "in", tmp_path / "out")  # HF → ours → HF bit-exact
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert LLMConfig.from_hf(written) == cfg
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                             dtype=torch.float32).eval()
  assert tuple(loaded.config.layer_types) == types
  assert loaded.config.sliding_window == WINDOW
  diff = max_diff_on_real(logits, hf_logits(loaded, ids, mask, pos), mask)
  assert diff < TOL, f"{name} exported: max abs logit diff {diff}"


def test_scanned_layers_keep_per_layer_windows(tmp_path):
  """Scanning stacks the layers, so the window choice travels as a per-layer flag."""
  window_model(**CASES["max_window_layers_1"][0]).save_pretrained(tmp_path)
  params, cfg, _ = hf.import_llm(tmp_path)
  ids, mask, pos = batch(cfg.vocab_size)
  for types in [(FULL, SLIDING), (SLIDING, SLIDING)]:  # mixed (flag) and uniform (one mask)
    c = dataclasses.replace(cfg, layer_types=types)
    s = dataclasses.replace(c, scan_layers=True)
    np.testing.assert_allclose(our_logits(llm.to_layout(params, s), s, ids, mask, pos),
                               our_logits(params, c, ids, mask, pos), atol=1e-5)
  scfg = dataclasses.replace(cfg, scan_layers=True)
  sparams = llm.to_layout(params, scfg)
  prompt = list(range(3, 15))
  assert (gen.generate_ids(DecoderLM(scfg), sparams, [prompt], max_new_tokens=12)
          == gen.generate_ids(DecoderLM(cfg), params, [prompt], max_new_tokens=12))


def test_enabled_window_with_no_sliding_layers_is_full_attention(tmp_path):
  """use_sliding_window with max_window_layers >= num_hidden_layers: transformers slides no
  layer, so neither do we (and the unused window is not exported)."""
  ref = window_model(max_window_layers=2)
  assert set(ref.config.layer_types) == {FULL}
  ref.save_pretrained(tmp_path)
  params, cfg, _ = hf.import_llm(tmp_path)
  assert cfg.layer_types == () and cfg.sliding_window is None
  ids, mask, pos = batch(cfg.vocab_size)
  diff = max_diff_on_real(our_logits(params, cfg, ids, mask, pos), hf_logits(ref, ids, mask, pos),
                          mask)
  assert diff < TOL


def test_llama_refuses_sliding_layers():
  c = hf_model("llama", num_attention_heads=4).config.to_dict()
  c["layer_types"] = [FULL, SLIDING]
  with pytest.raises(ValueError, match="layer_types"):
    LLMConfig.from_hf(c)
  cfg = LLMConfig(vocab_size=16, hidden_size=32, intermediate_size=32, num_layers=2, num_heads=2,
                  num_kv_heads=2, layer_types=(FULL, SLIDING), sliding_window=4)
  with pytest.raises(ValueError, match="LlamaForCausalLM"):
    cfg.to_hf()
  with pytest.raises(ValueError, match="sliding_window"):
    dataclasses.replace(cfg, sliding_window=None)


@pytest.mark.parametrize("field,value", [("sliding_window", "8"), ("max_window_layers", "1"),
                                         ("layer_types", [SLIDING])])
def test_malformed_window_fields_refused_at_import(field, value, tmp_path):
  c = window_model(max_window_layers=1).config.to_dict()
  if field == "max_window_layers":
    del c["layer_types"]  # max_window_layers only counts when layer_types is absent
  c[field] = value
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match=rf"config\.json: {field}=") as e:
    hf.import_llm(tmp_path)
  assert "\n" not in str(e.value)
