"""Tokenizers over HF files, GGUF metadata and Qwen's tiktoken file.

References computed at test time: tiktoken's BPE on the GPT-2 files for the HF-directory path;
the Rust `tokenizers` BPE (via transformers' tiktoken converter) for the Qwen tiktoken path;
the GGUF file's own token list and raw Jinja chat template for the GGUF path.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import jinja2.sandbox
import pytest
import tiktoken
import transformers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from longvid_jax.assets import asset
from longvid_jax.data import tokenizers

TEXTS = [
    "Hello world! How's it going?",
    "Numbers 12345 and 3.14159, dates 2024-06-01.",
    "  leading spaces\n\nand\ttabs\r\n",
    "Unicode: naïve café, 日本語のテキスト, emoji 🎬🎥, Ελληνικά",
    "def f(x):\n    return x ** 2  # code\n",
]
CONVERSATION = [{"role": "user", "content": "Describe the video."},
                {"role": "assistant", "content": "A cat jumps."},
                {"role": "user", "content": "Then?"}]


@pytest.fixture(scope="module")
def qwen():
  return tokenizers.load("qwen_tiktoken", add_video_token=True)


def test_qwen_specials_and_round_trip(qwen):
  assert qwen.token_id("<|im_start|>") == 151644
  assert qwen.token_id("<|im_end|>") == 151645
  assert qwen.token_id("<|endoftext|>") == 151643
  assert qwen.video_token_id == 151646 and qwen.vocab_size == 151647
  assert qwen.eos_id == 151645 and set(qwen.stop_ids) == {151645, 151643}
  for text in TEXTS:
    assert qwen.decode(qwen.encode(text)) == text
  assert qwen.encode("2024") == [qwen.encode(d)[0] for d in "2024"]  # digits split singly
  ids = qwen.encode("a<|im_start|>b<video>c")
  assert 151644 in ids and ids.count(qwen.video_token_id) == 1
  assert qwen.decode(ids, skip_special_tokens=True) == "abc"


def test_qwen_chatml(qwen):
  text = qwen.apply_chat_template(CONVERSATION, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                  "<|im_start|>user\nDescribe the video.<|im_end|>\n"
                  "<|im_start|>assistant\nA cat jumps.<|im_end|>\n"
                  "<|im_start|>user\nThen?<|im_end|>\n<|im_start|>assistant\n")
  sys = [{"role": "system", "content": "Be brief."}] + CONVERSATION[:1]
  assert qwen.apply_chat_template(sys, add_generation_prompt=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nDescribe the video.<|im_end|>\n")
  ids = qwen.encode(text)
  assert ids.count(151644) == 5 and ids.count(151645) == 4


@pytest.mark.slow
def test_qwen_tiktoken_matches_rust_bpe_and_exports(qwen, tmp_path):
  """Converting the ranks to HF's BPE takes ~20 s here; the exported files must behave the same."""
  qwen.save(tmp_path)
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS + [qwen.apply_chat_template(CONVERSATION) + "<video>"]:
    assert hf.encode(text, add_special_tokens=False) == qwen.encode(text), text
  assert hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == \
      qwen.apply_chat_template(CONVERSATION)
  again = tokenizers.load(tmp_path)
  assert again.video_token_id == qwen.video_token_id and again.eos_id == qwen.eos_id


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def test_hf_directory_matches_tiktoken_gpt2(tmp_path):
  vocab, merges = asset("gpt2_encoder_json"), asset("gpt2_vocab_bpe")
  # the classic HF layout: vocab.json + merges.txt + tokenizer_config.json
  shutil.copy(vocab, tmp_path / "vocab.json")
  shutil.copy(merges, tmp_path / "merges.txt")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
  tok = tokenizers.load(tmp_path, add_video_token=True)
  ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab))
  ref = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                          special_tokens={"<|endoftext|>": 50256})
  for text in TEXTS:
    assert tok.encode(text) == ref.encode(text), text
    assert tok.decode(tok.encode(text)) == text
  assert tok.eos_id == 50256 and tok.video_token_id == 50257 and tok.vocab_size == 50258
  assert tok.encode("a <video> b").count(50257) == 1
  tok.save(tmp_path / "saved")
  assert tokenizers.load(tmp_path / "saved").video_token_id == 50257
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template(CONVERSATION)


GGUF_TEXTS = TEXTS + [
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",  # specials stay whole
    "   many    spaces\t\t\n\n\n  and trailing   ",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "digits 0 1 22 333 4444 55555 and 1,234,567.89",
    "<|endoftext|><repo_name>x<file_sep>y",
    "ümlaut ÆØÅ ßtraße — “quotes” … 👩‍👩‍👧 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]


@pytest.mark.slow
def test_gguf_tokenizer_matches_transformers_without_torch(monkeypatch, tmp_path):
  """Built from the GGUF metadata with `tokenizers` alone; transformers' GGUF loader (which
  needs PyTorch) is the reference: same ids, decoded text, special ids and chat template."""
  pytest.importorskip("torch")
  path = asset("smollm2_135m_instruct_gguf")
  ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  monkeypatch.setenv("LONGVID_CACHE", str(tmp_path))
  with monkeypatch.context() as m:
    m.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    built = tokenizers.build_from_gguf(path)
    m.setattr(tokenizers, "build_from_gguf", lambda _: built)  # build once
    cached = tokenizers.load(f"gguf:{path}")  # saved as HF files, read back
  rendered = ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
  for tok in (built, cached):
    assert tok.apply_chat_template(CONVERSATION) == rendered
    for text in GGUF_TEXTS + [rendered]:
      for special in (False, True):
        assert tok.encode(text, special) == ref.encode(text, add_special_tokens=special), text
      ids = ref.encode(text, add_special_tokens=False)
      for skip in (False, True):
        assert tok.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id,
                                                    ref.pad_token_id) == (1, 2, 2)
    assert tok.special_tokens == {t.content: i for i, t in ref.added_tokens_decoder.items()
                                  if t.special}
    assert tok.vocab_size == len(ref) == 49152


def test_gguf_tokenizer_refuses_other_kinds(tmp_path):
  from gguf import GGUFWriter  # pylint: disable=g-import-not-at-top
  w = GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
  w.add_tokenizer_model("llama")
  w.add_token_list(["<unk>", "<s>", "</s>", "▁a"])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.close()
  with pytest.raises(ValueError, match="tokenizer.ggml.model='llama'.*Hugging Face tokenizer"):
    tokenizers.build_from_gguf(tmp_path / "spm.gguf")
  (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 10)
  with pytest.raises(ValueError, match="junk.gguf is not a readable GGUF file"):
    tokenizers.build_from_gguf(tmp_path / "junk.gguf")


def test_gguf_tokenizer_follows_metadata():
  from gguf import GGUFReader  # pylint: disable=g-import-not-at-top
  path = asset("smollm2_135m_instruct_gguf")
  tok = tokenizers.load(f"gguf:{path}", add_video_token=True)
  meta = GGUFReader(str(path)).fields
  vocab = meta["tokenizer.ggml.tokens"].contents()
  assert tok.token_id("<|im_start|>") == vocab.index("<|im_start|>") == 1
  assert tok.eos_id == meta["tokenizer.ggml.eos_token_id"].contents() == 2
  assert 2 in tok.stop_ids
  assert tok.video_token_id == len(vocab) and tok.vocab_size == len(vocab) + 1
  template = jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(
      meta["tokenizer.chat_template"].contents())
  want = template.render(messages=CONVERSATION, add_generation_prompt=True,
                         bos_token=vocab[1], eos_token=vocab[2])
  assert tok.apply_chat_template(CONVERSATION) == want
  # the module, not the same-named function transformers may export once something imported it
  byte_to_char = importlib.import_module("transformers.convert_slow_tokenizer").bytes_to_unicode()
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # the pieces are GGUF vocabulary entries that spell the text's bytes
    assert "".join(vocab[i] for i in ids) == "".join(byte_to_char[b] for b in text.encode())


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer at"):
    tokenizers.load(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="x.tiktoken"):
    tokenizers.load(tmp_path / "x.tiktoken")
  with pytest.raises(FileNotFoundError, match="y.gguf"):
    tokenizers.load(tmp_path / "y.gguf")
  (tmp_path / "bad.tiktoken").write_text("not base64 at all\n")
  with pytest.raises(ValueError, match="bad.tiktoken"):
    tokenizers.load(tmp_path / "bad.tiktoken")
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    tokenizers.load(tmp_path)


# A reasoning switch the way Qwen3 templates have one (written for this test): with thinking
# off, the generation prompt carries an empty reasoning block; the final answer turn shows it too.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")


def test_qwen3_style_thinking_switch_off_by_default_and_prompts_stay_prefixes(qwen, tmp_path):
  from longvid_jax.data import prompts
  hf_tok = qwen.to_hf()
  hf_tok.chat_template = THINKING_TEMPLATE
  hf_tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]},
                            replace_extra_special_tokens=False)
  hf_tok.save_pretrained(tmp_path)
  tok = tokenizers.load(tmp_path, add_video_token=True)
  assert tok.thinking is False
  prompt = tok.apply_chat_template(CONVERSATION[:1])
  assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
  tok.thinking = True
  assert tok.apply_chat_template(CONVERSATION[:1]).endswith("<|im_start|>assistant\n")
  tok.thinking = False
  # training renders prompt and answer with the same switch, so the answer alone is the target
  ex = prompts.encode_example(tok, "Describe the video.", "A cat jumps.", num_visual=2,
                              seq_len=96)
  target = ex["input_ids"][ex["loss_mask"] == 1].tolist()
  assert tok.decode(target) == "A cat jumps.<|im_end|>\n"
  assert "<think>" in tok.decode(ex["input_ids"][ex["attention_mask"] == 1].tolist())
