"""GGUF import against transformers' own GGUF loader reading the same file.

Both dequantise the same bytes with `gguf.quants`, so logits agree to float32 rounding:
tiny synthetic files within 1e-5; SmolLM2-135M (30 layers, |logits| up to ~35) within 1e-3
max abs (measured 1.7e-4) and the same top-1 token on every prompt.
"""

from __future__ import annotations

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from gguf import GGMLQuantizationType as Q

from longvid_jax.assets import asset
from longvid_jax.interop import gguf as gguf_lib
from longvid_jax.interop import hf
from longvid_jax.interop import llm_tables
from longvid_jax.interop import tables
from longvid_jax.models import generate as gen
from longvid_jax.models.llm import DecoderLM, LLMConfig
from test_llm_parity import hf_model  # pylint: disable=g-bad-import-order


def logits(params, cfg, ids) -> np.ndarray:
  model = DecoderLM(cfg)
  ids = jnp.asarray([ids])
  emb = model.apply({"params": params}, ids, method=DecoderLM.embed)
  return np.asarray(model.apply({"params": params}, emb, jnp.arange(ids.shape[1])[None],
                                jnp.ones_like(ids)))[0]


def close(w: gguf.GGUFWriter) -> None:
  """Header, metadata and tensors to disk, as llama.cpp's writers finish a file."""
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def write_gguf(path, ref, qtype: Q) -> None:
  """A llama.cpp-style GGUF of an HF Llama / Qwen2 / Qwen3 model: metadata (head size and rope
  scaling included), Q/K rotary permutation for Llama, 2-D weights quantised to `qtype` (norms
  stay F32, as llama.cpp writes them)."""
  c = ref.config
  cfg = LLMConfig.from_hf(c)
  params = llm_tables.convert({k: v.numpy() for k, v in ref.state_dict().items()},
                              llm_tables.HF_RULES, cfg, llm_tables.hf_ignore(cfg))
  w = gguf.GGUFWriter(str(path), cfg.family)
  w.add_key_length(cfg.dim_per_head)
  w.add_value_length(cfg.dim_per_head)
  rope = dict(cfg.rope_scaling or {})
  if rope:
    w.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
    w.add_rope_scaling_factor(rope["factor"])
    if "original_max_position_embeddings" in rope:
      w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  w.add_rope_dimension_count(cfg.dim_per_head)
  for name, x in tables.to_theirs(params, llm_tables.GGUF_RULES, cfg).items():
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim == 1 or qtype == Q.F32:
      w.add_tensor(name, x)
    elif qtype == Q.F16:
      w.add_tensor(name, x.astype(np.float16))
    else:
      w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
  close(w)


# Relative RMS error of a dequantised Gaussian weight matrix (4-bit ≈ 0.1, 8-bit ≈ 0.006).
REL_ERR = {Q.F16: 1e-3, Q.Q8_0: 0.02, Q.Q4_0: 0.25, Q.Q4_1: 0.2}


def three_ways(tmp_path, ref, qtype: Q):
  """(params, cfg, our logits, transformers' GGUF loader's, the source model's) on one prompt,
  after writing `ref` as a GGUF file and reading it back with both loaders."""
  write_gguf(tmp_path / "m.gguf", ref, qtype)
  params, cfg = gguf_lib.load_gguf(tmp_path / "m.gguf")
  assert cfg == LLMConfig.from_hf(ref.config)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
  ids = [1, 5, 9, 33, 70, 2, 64, 11]
  with torch.no_grad():
    want = theirs(torch.tensor([ids])).logits[0].numpy()
    orig = ref(torch.tensor([ids])).logits[0].numpy()
  return params, cfg, logits(params, cfg, ids), want, orig


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_synthetic_gguf_matches_transformers_loader(qtype, tmp_path):
  ref = hf_model("llama", seed=2, vocab_size=96, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=False, rope_theta=5e4, rms_norm_eps=1e-5)
  params, cfg, ours, want, orig = three_ways(tmp_path, ref, qtype)
  assert np.abs(ours - want).max() < 1e-5
  if qtype == Q.F32:  # lossless: also equal to the model the file was written from
    assert np.abs(ours - orig).max() < 1e-4
  else:  # quantised: every weight matrix near the original, but not equal to it
    exact = llm_tables.convert({k: v.numpy() for k, v in ref.state_dict().items()},
                                   llm_tables.HF_RULES, cfg)
    flat_ours, flat_exact = (traverse_util.flatten_dict(p, sep="/") for p in (params, exact))
    for k, x in flat_exact.items():
      if x.ndim == 2:
        rel = np.linalg.norm(flat_ours[k] - x) / np.linalg.norm(x)
        assert 0 < rel < REL_ERR[qtype], (k, rel)


def test_qwen3_gguf_matches_transformers_loader(tmp_path):
  """Qwen3's q/k norms travel as attn_q_norm / attn_k_norm, unpermuted. transformers' GGUF
  loader takes head_dim from Qwen3's default (128), so the reference uses it too."""
  ref = hf_model("qwen3", seed=4, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                 tie_word_embeddings=False, rope_theta=1e6)
  _, cfg, ours, want, orig = three_ways(tmp_path, ref, Q.F32)
  assert cfg.family == "qwen3"
  assert np.abs(ours - want).max() < 1e-4 and np.abs(ours - orig).max() < 1e-4


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_gguf_yarn_and_linear_rope_scaling(family, tmp_path):
  """llama.cpp's rope.scaling.* keys become the same rope_scaling a HF config states; logits
  past the original context match the model the file came from."""
  for rope in ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
               {"rope_type": "linear", "factor": 2.5}):
    ref = hf_model(family, seed=5, num_attention_heads=4, num_key_value_heads=2,
                   tie_word_embeddings=True, max_position_embeddings=64,
                   rope_parameters={**rope, "rope_theta": 1e4})
    write_gguf(tmp_path / "r.gguf", ref, Q.F32)
    params, cfg = gguf_lib.load_gguf(tmp_path / "r.gguf")
    assert cfg == LLMConfig.from_hf(ref.config), rope
    ids = np.random.default_rng(0).integers(0, 97, 60).tolist()  # past 16 original positions
    with torch.no_grad():
      orig = ref(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(logits(params, cfg, ids) - orig).max() < 1e-4, rope


def test_gguf_llama3_rope_freqs_are_refused(tmp_path):
  ref = hf_model("llama", seed=2, num_attention_heads=4, num_key_value_heads=2)
  w = gguf.GGUFWriter(str(tmp_path / "l31.gguf"), "llama")
  w.add_block_count(2)
  w.add_embedding_length(64)
  w.add_head_count(4)
  w.add_feed_forward_length(96)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_tensor("rope_freqs.weight", np.ones(8, np.float32))
  w.add_tensor("token_embd.weight", ref.state_dict()["model.embed_tokens.weight"].numpy())
  close(w)
  with pytest.raises(ValueError, match=r"l31.gguf.*rope_freqs.weight.*Hugging Face checkpoint"):
    gguf_lib.load_gguf(tmp_path / "l31.gguf")


def test_gguf_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    gguf_lib.load_gguf(tmp_path / "nope.gguf")
  ref = hf_model("llama", vocab_size=64, num_attention_heads=4, num_key_value_heads=2)
  write_gguf(tmp_path / "m.gguf", ref, Q.Q8_0)
  data = (tmp_path / "m.gguf").read_bytes()
  (tmp_path / "cut.gguf").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"cut\.gguf.*truncated"):
    gguf_lib.load_gguf(tmp_path / "cut.gguf")
  w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  close(w)
  with pytest.raises(ValueError, match=r"gpt2\.gguf.*'gpt2' is not supported"):
    gguf_lib.load_gguf(tmp_path / "gpt2.gguf")


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
           "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smollm2():
  path = asset("smollm2_135m_instruct_gguf")
  params, cfg, tok = hf.import_llm(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
  return params, cfg, tok, ref


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2):
  params, cfg, tok, ref = smollm2
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
  assert cfg.tie_embeddings and cfg.rope_theta == 1e5
  for text in PROMPTS:
    ids = tok.encode(text)
    with torch.no_grad():
      want = ref(torch.tensor([ids])).logits[0].numpy()
    ours = logits(params, cfg, ids)
    diff = np.abs(ours - want).max()
    assert diff < 1e-3, (text, diff)
    assert ours[-1].argmax() == want[-1].argmax(), text


@pytest.mark.slow
def test_smollm2_answers_capital_of_france(smollm2):
  params, cfg, tok, _ = smollm2
  answer = gen.chat(DecoderLM(cfg), params, tok,
                    [{"role": "user", "content": "What is the capital of France?"}],
                    max_new_tokens=24)
  assert "Paris" in answer, answer


@pytest.mark.slow
def test_smollm2_exports_to_hf_directory(smollm2, tmp_path):
  """GGUF → ours → HF directory that transformers loads as LlamaForCausalLM, tokenizer included."""
  params, cfg, tok, _ = smollm2
  hf.export_llm(params, cfg, tmp_path, tokenizer=tok)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  assert type(model).__name__ == "LlamaForCausalLM"
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  chat = [{"role": "user", "content": "Hi"}]
  text = tok.apply_chat_template(chat)
  assert hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == text
  ids = tok.encode(text)
  assert hf_tok.encode(text, add_special_tokens=False) == ids
  with torch.no_grad():
    want = model(torch.tensor([ids])).logits[0].numpy()
  assert np.abs(logits(params, cfg, ids) - want).max() < 1e-3
