"""KV-cache generation against transformers' `generate` on the same weights.

Greedy decoding is compared token for token (20 new tokens, `do_sample=False`); batched,
left-padded prompts must give what each prompt gives alone; nucleus sampling is checked against a
NumPy computation of the nucleus distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from longvid_jax.interop import hf
from longvid_jax.models import generate as gen
from longvid_jax.models.llm import DecoderLM
from test_llm_parity import hf_model  # pylint: disable=g-bad-import-order

PROMPTS = [[5, 7, 9, 11, 2, 40, 41], [3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
N_NEW = 20


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request, tmp_path_factory):
  """(HF model, our model, our params) on the same random weights."""
  kw = (dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        if request.param == "qwen2" else
        dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
             rope_theta=2e5))
  ref = hf_model(request.param, seed=5, **kw)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  params, cfg, _ = hf.import_llm(path)
  return ref, DecoderLM(cfg), params


def hf_greedy(ref, prompt, n=N_NEW):
  out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=int),
                     do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def test_greedy_matches_hf_and_batching_is_invisible(pair):
  ref, model, params = pair
  # Alone: one compiled shape for all prompts (extra left padding must not matter either).
  alone = [gen.generate_ids(model, params, [p], max_new_tokens=N_NEW, pad_multiple=16)[0]
           for p in PROMPTS]
  for p, ours in zip(PROMPTS, alone):
    assert len(ours) == N_NEW
    assert ours == hf_greedy(ref, p), p
  batched = gen.generate_ids(model, params, PROMPTS, max_new_tokens=N_NEW, pad_multiple=16)
  assert batched == alone


def test_prompt_embeddings_match_hf_inputs_embeds(pair):
  """Generation from arbitrary embeddings (as the multimodal model splices them)."""
  ref, model, params = pair
  d = model.cfg.hidden_size
  embeds = np.random.default_rng(0).normal(0, 1.0, (2, 6, d)).astype(np.float32)
  mask = np.ones((2, 6), np.int32)
  mask[1, :2] = 0  # left-padded second row
  ours = gen.generate(model, params, jnp.asarray(embeds), mask, max_new_tokens=8)
  for row in range(2):
    real = embeds[row][mask[row].astype(bool)][None]
    out = ref.generate(inputs_embeds=torch.tensor(real),
                       attention_mask=torch.ones(real.shape[:2], dtype=int), do_sample=False,
                       max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    assert ours.tokens[row].tolist() == out[0].tolist()


def test_stop_tokens_end_rows_and_pad(pair):
  _, model, params = pair
  free = gen.generate_ids(model, params, [PROMPTS[0]], max_new_tokens=N_NEW, pad_multiple=16)[0]
  stop = free[4]
  k = free.index(stop)
  ids, mask = gen.left_pad([PROMPTS[0]], 0, 16)
  emb = model.apply({"params": params}, jnp.asarray(ids), method=DecoderLM.embed)
  out = gen.generate(model, params, emb, mask, max_new_tokens=N_NEW, stop_ids=[stop], pad_id=-1)
  assert out.lengths.tolist() == [k + 1]
  assert out.tokens[0, :k + 1].tolist() == free[:k + 1]
  assert (out.tokens[0, k + 1:] == -1).all()


def test_tiny_top_p_is_greedy_and_sampling_is_reproducible(pair):
  _, model, params = pair
  greedy = gen.generate_ids(model, params, PROMPTS, max_new_tokens=N_NEW, pad_multiple=16)
  nucleus1 = gen.generate_ids(model, params, PROMPTS, max_new_tokens=N_NEW, pad_multiple=16,
                              temperature=1.0, top_p=1e-6, rng=jax.random.key(1))
  assert nucleus1 == greedy
  a, b, c = (gen.generate_ids(model, params, PROMPTS, max_new_tokens=N_NEW, pad_multiple=16,
                              temperature=1.5, top_p=1.0, rng=jax.random.key(s))
             for s in (7, 7, 8))
  assert a == b and a != c


def test_sample_logits_follows_nucleus_distribution():
  """Empirical frequencies vs the NumPy nucleus distribution (4e4 draws; tolerance 0.015 ≈ 5σ)."""
  logits = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, 0.9], np.float32)
  temperature, top_p = 0.8, 0.75
  z = logits / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p)
  keep = np.zeros_like(p, bool)
  keep[order[(np.cumsum(p[order]) - p[order]) < top_p]] = True
  want = np.where(keep, p, 0)
  want /= want.sum()
  n = 40000
  draws = gen.sample_logits(jnp.tile(logits, (n, 1)), jax.random.key(0), jnp.float32(temperature),
                            jnp.float32(top_p))
  freq = np.bincount(np.asarray(draws), minlength=len(logits)) / n
  assert (freq[~keep] == 0).all()
  np.testing.assert_allclose(freq, want, atol=0.015)


def test_bad_arguments(pair):
  _, model, params = pair
  ids, mask = gen.left_pad(PROMPTS, 0)
  emb = model.apply({"params": params}, jnp.asarray(ids), method=DecoderLM.embed)
  with pytest.raises(ValueError, match="left-padded"):
    gen.generate(model, params, emb, mask[:, ::-1], max_new_tokens=2)
  with pytest.raises(ValueError, match="rng"):
    gen.generate(model, params, emb, mask, max_new_tokens=2, temperature=0.7)
  with pytest.raises(ValueError, match="at least one token"):
    gen.left_pad([[1], []])
