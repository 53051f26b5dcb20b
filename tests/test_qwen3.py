"""Qwen3 dense decoder (per-head q/k RMSNorm before RoPE, explicit head_dim, no q/k/v bias)
against transformers' `Qwen3ForCausalLM` on the same random weights.

Tolerance: float32 logits within 1e-4 max abs; greedy generation token for token; HF → ours →
HF tensors bit-exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from longvid_jax.interop import hf
from longvid_jax.models import generate as gen
from longvid_jax.models.llm import DecoderLM, LLMConfig
from test_llm_parity import (  # pylint: disable=g-bad-import-order
    assert_same_tensors, batch, hf_logits, hf_model, max_diff_on_real, our_logits)
from test_rope_scaling import hf_greedy, long_batch  # pylint: disable=g-bad-import-order

TOL = 1e-4

CONFIGS = {
    # head_dim 32 with 4 heads: q/k/v widths (128) differ from hidden (64)
    "tied_headdim32": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                           tie_word_embeddings=True, rope_theta=1e6),
    # YaRN past a 32-token context and a sliding second layer, as Qwen3 long-context configs have
    "untied_yarn_window": dict(
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False,
        max_position_embeddings=128, use_sliding_window=True, sliding_window=8,
        max_window_layers=1, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                              "original_max_position_embeddings": 32}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_qwen3_matches_transformers(name, tmp_path):
  ref = hf_model("qwen3", **CONFIGS[name])
  ref.save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in")
  assert cfg.family == "qwen3" and cfg.dim_per_head == ref.config.head_dim
  assert params["layers_0"]["self_attn"]["q_norm"]["weight"].shape == (ref.config.head_dim,)

  prompt = np.random.default_rng(9).integers(0, cfg.vocab_size, 25).tolist()
  assert gen.generate_ids(DecoderLM(cfg), params, [prompt], max_new_tokens=20)[0] == \
      hf_greedy(ref, prompt, 20)

  for ids, mask, pos in (batch(cfg.vocab_size), long_batch(cfg.vocab_size, 48)):
    logits = our_logits(params, cfg, ids, mask, pos)
    diff = max_diff_on_real(logits, hf_logits(ref, ids, mask, pos), mask)
    assert diff < TOL, f"{name}: max abs logit diff {diff}"

  hf.export_llm(params, cfg, tmp_path / "out")
  assert_same_tensors(tmp_path / "in", tmp_path / "out")
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert LLMConfig.from_hf(written) == cfg
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                             dtype=torch.float32).eval()
  assert type(loaded).__name__ == "Qwen3ForCausalLM"
  assert loaded.config.rope_parameters == ref.config.rope_parameters
  assert loaded.config.layer_types == ref.config.layer_types
  diff = max_diff_on_real(logits, hf_logits(loaded, ids, mask, pos), mask)
  assert diff < TOL, f"{name} exported: max abs logit diff {diff}"


def test_qwen3_attention_bias_refused(tmp_path):
  c = hf_model("qwen3", num_attention_heads=4, head_dim=16).config.to_dict()
  c.update(attention_bias=True, architectures=["Qwen3ForCausalLM"])
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match=r"config\.json: attention_bias"):
    hf.import_llm(tmp_path)
