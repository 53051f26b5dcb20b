"""Qwen2 / Llama import and export against transformers' PyTorch models on the same weights.

Reference: `Qwen2ForCausalLM` / `LlamaForCausalLM` built from small random configs at test time,
saved with `save_pretrained` and read back through our importer. Tolerance: 1e-4 max abs on
float32 logits (measured ~2e-7).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from longvid_jax.interop import hf
from longvid_jax.interop import llm_tables
from longvid_jax.models.llm import DecoderLM, LLMConfig

TOL = 1e-4

# (family, config kwargs): GQA ratios 1, 2, 4 and 8; tied and untied; non-default rope θ;
# an explicit head_dim that differs from hidden // heads.
CONFIGS = {
    "qwen2_gqa1_tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=4,
                                      tie_word_embeddings=True, rope_theta=1e6)),
    "llama_gqa2_untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=False, rope_theta=5e5)),
    "qwen2_gqa4_untied": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2,
                                        tie_word_embeddings=False, rope_theta=2e4,
                                        rms_norm_eps=1e-5)),
    "llama_gqa8_tied_headdim": ("llama", dict(num_attention_heads=8, num_key_value_heads=1,
                                              head_dim=12, tie_word_embeddings=True,
                                              rope_theta=1e5)),
}


def hf_model(family: str, seed: int = 0, **kw) -> transformers.PreTrainedModel:
  """A small random HF model; every tensor (biases and norms included) is non-trivial."""
  base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=256)
  base.update(kw)
  config_cls, model_cls = {
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
      "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[family]
  model = model_cls(config_cls(**base))
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.15 * torch.randn(p.shape, generator=gen))
  return model.eval()


def batch(vocab: int, seed: int = 1):
  """ids[3,11] with left padding of 0, 4 and 7 tokens; positions count real tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (3, 11))
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  mask[2, :7] = 0
  pos = np.maximum(mask.cumsum(1) - 1, 0)
  return ids, mask, pos


def our_logits(params, cfg, ids, mask, pos) -> np.ndarray:
  model = DecoderLM(cfg)
  emb = model.apply({"params": params}, jnp.asarray(ids), method=DecoderLM.embed)
  return np.asarray(model.apply({"params": params}, emb, jnp.asarray(pos), jnp.asarray(mask)))


def hf_logits(model, ids, mask, pos) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.float().numpy()


def max_diff_on_real(a, b, mask) -> float:
  return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
  family, kw = CONFIGS[name]
  ref = hf_model(family, **kw)
  ref.save_pretrained(tmp_path)
  params, cfg, tok = hf.import_llm(tmp_path)
  assert tok is None
  assert cfg.family == family
  assert cfg.tie_embeddings == kw["tie_word_embeddings"]
  assert cfg.num_kv_heads == kw["num_key_value_heads"] and cfg.rope_theta == kw["rope_theta"]
  ids, mask, pos = batch(cfg.vocab_size)
  diff = max_diff_on_real(our_logits(params, cfg, ids, mask, pos), hf_logits(ref, ids, mask, pos),
                          mask)
  assert diff < TOL, f"{name}: max abs logit diff {diff}"


def test_config_round_trip():
  for family, kw in CONFIGS.values():
    cfg = LLMConfig.from_hf(hf_model(family, **kw).config)
    assert LLMConfig.from_hf(cfg.to_hf()) == cfg


def assert_same_tensors(a_dir, b_dir):
  """Two checkpoint directories hold the same tensor names, dtypes and bits."""
  a = safetensors.numpy.load_file(a_dir / "model.safetensors")
  b = safetensors.numpy.load_file(b_dir / "model.safetensors")
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["qwen2_gqa4_untied", "llama_gqa8_tied_headdim"])
def test_hf_ours_hf_round_trip_is_exact(name, tmp_path):
  family, kw = CONFIGS[name]
  hf_model(family, **kw).save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in")
  hf.export_llm(params, cfg, tmp_path / "out")
  assert_same_tensors(tmp_path / "in", tmp_path / "out")


@pytest.mark.parametrize("family,arch", [("qwen2", "Qwen2ForCausalLM"),
                                         ("llama", "LlamaForCausalLM")])
def test_export_loads_in_transformers(family, arch, tmp_path):
  cfg = LLMConfig(vocab_size=80, hidden_size=48, intermediate_size=64, num_layers=2, num_heads=6,
                  num_kv_heads=2, rope_theta=3e4, tie_embeddings=family == "llama",
                  qkv_bias=family == "qwen2", max_position=128)
  model = DecoderLM(cfg)
  ids, mask, pos = batch(cfg.vocab_size)
  init = lambda m, i: m(m.embed(i), jnp.asarray(pos), jnp.asarray(mask))
  params = nn.unbox(model.init(jax.random.key(3), jnp.asarray(ids), method=init))["params"]
  # biases start at zero and norms at one; perturb so every tensor is checked
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape),
                        params)
  hf.export_llm(params, cfg, tmp_path)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  assert type(loaded).__name__ == arch
  diff = max_diff_on_real(our_logits(params, cfg, ids, mask, pos),
                          hf_logits(loaded.eval(), ids, mask, pos), mask)
  assert diff < TOL, diff


def test_bf16_export_preserved(tmp_path):
  ref = hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
  ref.save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in", dtype=jnp.bfloat16)
  hf.export_llm(params, cfg, tmp_path / "out")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
  stored = safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors")
  q = stored["model.layers.1.self_attn.q_proj.weight"]
  assert q.dtype == ml_dtypes.bfloat16
  ours = np.asarray(params["layers_1"]["self_attn"]["q_proj"]["kernel"]).T
  assert np.array_equal(q.view(np.uint16), ours.view(np.uint16))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
  assert loaded.dtype == torch.bfloat16
  w = loaded.model.layers[1].self_attn.q_proj.weight.detach()
  expected = ref.model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16)
  assert torch.equal(w, expected)


def test_sharded_checkpoint(tmp_path):
  family, kw = CONFIGS["qwen2_gqa4_untied"]
  ref = hf_model(family, **kw)
  ref.save_pretrained(tmp_path, max_shard_size="60KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  params, cfg, _ = hf.import_llm(tmp_path)
  ids, mask, pos = batch(cfg.vocab_size)
  diff = max_diff_on_real(our_logits(params, cfg, ids, mask, pos), hf_logits(ref, ids, mask, pos),
                          mask)
  assert diff < TOL


def test_resize_vocab_keeps_old_logits():
  family, kw = CONFIGS["llama_gqa2_untied"]
  cfg = LLMConfig.from_hf(hf_model(family, **kw).config)
  ref = hf_model(family, **kw)
  params = llm_tables.convert({k: v.numpy() for k, v in ref.state_dict().items()},
                              llm_tables.HF_RULES, cfg)
  big, big_cfg = hf.resize_vocab(params, cfg, cfg.vocab_size + 3)
  assert big_cfg.vocab_size == cfg.vocab_size + 3
  ids, mask, pos = batch(cfg.vocab_size)
  a = our_logits(params, cfg, ids, mask, pos)
  b = our_logits(big, big_cfg, ids, mask, pos)
  assert b.shape[-1] == cfg.vocab_size + 3
  np.testing.assert_allclose(b[..., :cfg.vocab_size], a, atol=1e-6)


# --- malformed inputs ----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
  hf_model("llama", num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path)
  return tmp_path


def test_truncated_safetensors_names_file(saved):
  f = saved / "model.safetensors"
  f.write_bytes(f.read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
    hf.import_llm(saved)


def test_unknown_architecture_names_file(saved):
  c = json.loads((saved / "config.json").read_text())
  c.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
  (saved / "config.json").write_text(json.dumps(c))
  with pytest.raises(ValueError, match=r"config\.json.*GPT2LMHeadModel.*not supported"):
    hf.import_llm(saved)


def test_sliding_layers_without_window_rejected(tmp_path):
  """layer_types asks for sliding layers while use_sliding_window is off: transformers has no
  window to apply either, so the import refuses rather than guessing."""
  c = transformers.Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                               num_hidden_layers=2, intermediate_size=64, vocab_size=50,
                               layer_types=["full_attention", "sliding_attention"])
  with pytest.raises(ValueError, match="use_sliding_window"):
    LLMConfig.from_hf(c)
  d = c.to_dict()
  d["architectures"] = ["Qwen2ForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(d))
  with pytest.raises(ValueError, match=r"config\.json.*use_sliding_window"):
    hf.import_llm(tmp_path)


def test_wrong_shaped_tensor_names_file_and_tensor(saved):
  f = saved / "model.safetensors"
  tensors = safetensors.numpy.load_file(f)
  name = "model.layers.1.mlp.up_proj.weight"
  tensors[name] = tensors[name][:-1]
  safetensors.numpy.save_file(tensors, f, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=rf"{name}.*model\.safetensors.*shape"):
    hf.import_llm(saved)


def test_missing_and_extra_tensors_reported(saved):
  f = saved / "model.safetensors"
  tensors = safetensors.numpy.load_file(f)
  del tensors["model.norm.weight"]
  tensors["model.layers.0.self_attn.rogue.weight"] = np.zeros(3, np.float32)
  safetensors.numpy.save_file(tensors, f, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"rogue"):
    hf.import_llm(saved)
  del tensors["model.layers.0.self_attn.rogue.weight"]
  safetensors.numpy.save_file(tensors, f, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"missing norm/weight"):
    hf.import_llm(saved)


def test_missing_directory_and_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    hf.import_llm(tmp_path / "nope")
  (tmp_path / "config.json").write_text(json.dumps(
      hf_model("llama", num_attention_heads=4).config.to_dict()))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.import_llm(tmp_path)


def test_export_with_tokenizer_round_trips(tmp_path):
  """Exported directories carry the tokenizer (with `<video>`) and its stop ids."""
  import shutil  # pylint: disable=g-import-not-at-top
  from longvid_jax.assets import asset  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  src = tmp_path / "tok"
  src.mkdir()
  shutil.copy(asset("gpt2_encoder_json"), src / "vocab.json")
  shutil.copy(asset("gpt2_vocab_bpe"), src / "merges.txt")
  (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
  tok = tokenizers.load(src, add_video_token=True)
  ref = hf_model("llama", vocab_size=tok.vocab_size, num_attention_heads=4, num_key_value_heads=2)
  ref.save_pretrained(tmp_path / "in")
  params, cfg, _ = hf.import_llm(tmp_path / "in")
  hf.export_llm(params, cfg, tmp_path / "out", tokenizer=tok)
  params2, cfg2, tok2 = hf.import_llm(tmp_path / "out")
  assert cfg2 == cfg and tok2.video_token_id == tok.video_token_id == 50257
  assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == 50256
  loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert loaded.convert_tokens_to_ids("<video>") == 50257
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_llm_convert_command(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  from longvid_jax.interop import commands  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser()
  commands.register(ap.add_subparsers(dest="command", required=True))
  ref = hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
  ref.save_pretrained(tmp_path / "in")
  args = ap.parse_args(["llm-convert", str(tmp_path / "in"), str(tmp_path / "out"),
                        "--dtype", "bfloat16"])
  assert args.func(args) == 0
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
  assert type(loaded).__name__ == "Qwen2ForCausalLM" and loaded.dtype == torch.bfloat16
  for (name, a), b in zip(ref.state_dict().items(), loaded.state_dict().values()):
    assert torch.equal(a.to(torch.bfloat16), b), name


def test_first_layers_match_transformers_with_fewer_layers(tmp_path):
  """`model.llm.layers = 2` of a 4-layer checkpoint is transformers' model built with 2 layers
  on the same tensors (the later layers' weights ignored)."""
  from longvid_jax import runs  # pylint: disable=g-import-not-at-top
  full = hf_model("llama", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
  full.save_pretrained(tmp_path / "full")
  short_cfg = transformers.LlamaConfig(**{**full.config.to_dict(), "num_hidden_layers": 2})
  short = transformers.LlamaForCausalLM(short_cfg).eval()
  missing, unexpected = short.load_state_dict(full.state_dict(), strict=False)
  assert not missing and unexpected  # the ignored layers, nothing the short model lacks
  params, cfg, _ = hf.import_llm(tmp_path / "full")
  cfg2 = runs.truncated(cfg, 2)
  assert cfg2.num_layers == 2
  ids, mask, pos = batch(cfg.vocab_size)
  ours = our_logits(runs.first_layers(params, 2), cfg2, ids, mask, pos)
  diff = max_diff_on_real(ours, hf_logits(short, ids, mask, pos), mask)
  assert diff < TOL, diff
  with pytest.raises(ValueError, match=r"model.llm.layers=5 must lie in 1..4"):
    runs.truncated(cfg, 5)
