"""RoPE variants (default, linear, dynamic NTK, YaRN, llama3) against transformers.

Reference: `LlamaForCausalLM` / `Qwen2ForCausalLM` with `rope_parameters` of each type, saved by
transformers and imported. Sequences run well past the original context (32 positions) so every
frequency band, and the dynamic rescaling, is exercised. Tolerances: inverse frequencies within
5e-7 relative (a few float32 ulps; measured ≤1.6e-7), float32 logits within 1e-4 max abs, greedy
generation token for token.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longvid_jax.interop import hf
from longvid_jax.models import generate as gen
from longvid_jax.models import llm
from longvid_jax.models.llm import DecoderLM, LLMConfig
from test_llm_parity import (  # pylint: disable=g-bad-import-order
    assert_same_tensors, hf_logits, hf_model, max_diff_on_real, our_logits)

TOL = 1e-4
ORIG = 32  # the "pretraining" context every scaled case extends

# rope type → (rope_parameters without rope_theta, max_position_embeddings)
ROPES = {
    "default": ({"rope_type": "default"}, ORIG),
    "linear": ({"rope_type": "linear", "factor": 2.5}, 4 * ORIG),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, ORIG),  # rescales past 32 positions
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIG},
             4 * ORIG),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": ORIG}, 4 * ORIG),
}


def rope_model(family: str, rope: str, seed: int = 0):
  params, max_pos = ROPES[rope]
  # head_dim 16 at theta 1e4 puts llama3's and YaRN's bands (kept / blended / scaled) all in use
  return hf_model(family, seed=seed, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=family == "qwen2", max_position_embeddings=max_pos,
                  rope_parameters={**params, "rope_theta": 1e4})


def long_batch(vocab: int, length: int = 80):
  """Two rows of `length` tokens, the second left-padded by 9: positions reach length - 1."""
  ids = np.random.default_rng(3).integers(0, vocab, (2, length))
  mask = np.ones_like(ids)
  mask[1, :9] = 0
  return ids, mask, np.maximum(mask.cumsum(1) - 1, 0)


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
  """n greedy tokens from transformers. No EOS: LlamaConfig's default eos id 2 is an ordinary
  token here, and min_new_tokens would mask it rather than let generation run on."""
  model.generation_config.eos_token_id = None
  out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=int),
                       do_sample=False, max_new_tokens=n, pad_token_id=0)
  return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("rope", sorted(ROPES))
def test_long_context_logits_generation_and_export(family, rope, tmp_path):
  ref = rope_model(family, rope)
  ref.save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in")
  assert cfg.rope_type == rope

  # Greedy first, on the fresh model: transformers' dynamic RoPE keeps state between calls. The
  # 25-token prompt crosses position 32 while generating, so dynamic frequencies change mid-way.
  prompt = np.random.default_rng(4).integers(0, cfg.vocab_size, 25).tolist()
  ours = gen.generate_ids(DecoderLM(cfg), params, [prompt], max_new_tokens=20)[0]
  assert ours == hf_greedy(ref, prompt, 20)

  ids, mask, pos = long_batch(cfg.vocab_size)
  logits = our_logits(params, cfg, ids, mask, pos)
  diff = max_diff_on_real(logits, hf_logits(ref, ids, mask, pos), mask)
  assert diff < TOL, f"{family}/{rope}: max abs logit diff {diff}"

  hf.export_llm(params, cfg, tmp_path / "out")
  assert_same_tensors(tmp_path / "in", tmp_path / "out")  # HF → ours → HF bit-exact
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  original = json.loads((tmp_path / "in" / "config.json").read_text())
  assert written["rope_parameters"] == original["rope_parameters"]
  assert written["max_position_embeddings"] == original["max_position_embeddings"]
  assert LLMConfig.from_hf(written) == cfg
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                             dtype=torch.float32).eval()
  assert loaded.config.rope_parameters == ref.config.rope_parameters
  diff = max_diff_on_real(logits, hf_logits(loaded, ids, mask, pos), mask)
  assert diff < TOL, f"{family}/{rope} exported: max abs logit diff {diff}"


# Parameter corners of each formula: non-default betas, no truncation, mscale ratios, an explicit
# attention factor, llama3 bands at other cut-offs, legacy `type` spelling, head_dim 64.
FREQ_CASES = [
    {"rope_type": "linear", "factor": 3.3},
    {"type": "linear", "factor": 2},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 32, "beta_fast": 8,
     "beta_slow": 0.5, "truncate": False},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 0.707,
     "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
     "attention_factor": 1.3},
    {"rope_type": "dynamic", "factor": 2.0},
]


@pytest.mark.parametrize("head_dim,theta", [(16, 1e4), (64, 5e5)])
@pytest.mark.parametrize("case", range(len(FREQ_CASES)))
def test_inverse_frequencies_match_transformers(case, head_dim, theta):
  params = FREQ_CASES[case]
  c = transformers.LlamaConfig(hidden_size=64, num_attention_heads=64 // head_dim,
                               num_hidden_layers=1, intermediate_size=32, vocab_size=16,
                               max_position_embeddings=128,
                               rope_parameters={**params, "rope_theta": theta})
  cfg = LLMConfig.from_hf(c)
  rope_type = params.get("rope_type", params.get("type"))
  init = ROPE_INIT_FUNCTIONS[rope_type]
  ref, ref_scale = init(c, None)
  inv, scale = llm.rope_frequencies(cfg)
  np.testing.assert_allclose(inv, ref.numpy(), rtol=5e-7, atol=0)
  assert scale == pytest.approx(ref_scale, rel=1e-12)
  if rope_type == "dynamic":  # short calls keep the default set; longer ones grow theta
    for length in (100, 128, 129, 300, 1000):
      got, _ = llm.rope_inv_freq(cfg, jnp.arange(length)[None])
      want = ref if length <= 128 else init(c, None, seq_len=torch.tensor(length))[0]
      np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=5e-7, atol=0)


def test_top_level_original_context_wins_as_in_transformers():
  """A top-level original_max_position_embeddings (Phi-3 style) overrides the one in the rope
  dict: transformers' rotary init re-standardises with it, whatever the config object shows."""
  c = {"model_type": "llama", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 32,
       "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 256,
       "original_max_position_embeddings": 64,
       "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}}
  cfg = LLMConfig.from_hf(c)
  assert dict(cfg.rope_scaling)["original_max_position_embeddings"] == 64
  rotary = transformers.LlamaForCausalLM(transformers.LlamaConfig(**c)).model.rotary_emb
  np.testing.assert_allclose(llm.rope_frequencies(cfg)[0], rotary.inv_freq.numpy(), rtol=5e-7)
  assert llm.rope_frequencies(cfg)[1] == pytest.approx(rotary.attention_scaling, rel=1e-12)
  del c["original_max_position_embeddings"], c["rope_scaling"]["original_max_position_embeddings"]
  assert dict(LLMConfig.from_hf(c).rope_scaling)["original_max_position_embeddings"] == 256


@pytest.mark.parametrize("params,field", [
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "rope_type"),
    ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, "high_freq_factor"),
    ({"rope_type": "yarn", "factor": 4.0, "mrope_section": [2, 2]}, "mrope_section"),
    ({"rope_type": "dynamic", "factor": 0}, "factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0},
     "high_freq_factor"),
])
def test_unsupported_rope_refused_at_import(params, field, tmp_path):
  c = rope_model("llama", "default").config.to_dict()
  c["rope_parameters"] = {**params, "rope_theta": 1e4}
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match=rf"config\.json: rope_scaling\.{field}") as e:
    hf.import_llm(tmp_path)
  assert "\n" not in str(e.value)


def test_malformed_rope_parameters_refused(tmp_path):
  c = rope_model("llama", "default").config.to_dict()
  c["rope_parameters"] = "yarn"
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match=r"config\.json: rope_parameters='yarn'"):
    hf.import_llm(tmp_path)


def test_config_dict_round_trips_through_json():
  cfg = LLMConfig(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                "original_max_position_embeddings": 32},
                  sliding_window=8, num_layers=2, qk_norm=True, head_dim=64,
                  layer_types=("full_attention", "sliding_attention"))
  assert LLMConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
