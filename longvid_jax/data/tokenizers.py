"""One small tokenizer interface over the formats real checkpoints ship.

- Hugging Face tokenizer files (a local directory or hub id), through `transformers`;
- the tokenizer inside a GGUF file, built from its metadata with the `tokenizers` library (no
  PyTorch needed), cached as HF files;
- Qwen's tiktoken rank file, through `tiktoken`, with Qwen2's ChatML specials and template.

All of them can gain a `<video>` placeholder special token, which the multimodal model replaces
with visual embeddings.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import shutil
from typing import Sequence

from longvid_jax.interop import files

VIDEO_TOKEN = "<video>"
# End-of-turn / end-of-text markers of the chat formats we know; a tokenizer stops on those it has.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


class Tokenizer(abc.ABC):
  """encode / decode / chat template plus the ids generation and prompt building need."""

  @abc.abstractmethod
  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Special-token strings in `text` (e.g. `<|im_start|>`) map to their single ids."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    ...

  @abc.abstractmethod
  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render a conversation as text, exactly as the model was trained to see it."""

  @abc.abstractmethod
  def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
    """Register never-split tokens (new ones get ids after the current vocab); returns ids."""

  @property
  @abc.abstractmethod
  def special_tokens(self) -> dict[str, int]:
    ...

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids in use, added tokens included (the model's embedding must be at least this)."""

  @abc.abstractmethod
  def save(self, out_dir: str | os.PathLike) -> None:
    """Write Hugging Face tokenizer files that `AutoTokenizer.from_pretrained` reads."""

  bos_id: int | None = None
  eos_id: int | None = None
  _pad_id: int | None = None

  @property
  def pad_id(self) -> int:
    """Padding id; falls back to eos (pads are masked out, so any real id will do)."""
    for i in (self._pad_id, self.eos_id):
      if i is not None:
        return i
    return 0

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end generation: eos plus the chat end-of-turn markers this vocab has."""
    ids = [self.eos_id] if self.eos_id is not None else []
    specials = self.special_tokens
    ids += [specials[t] for t in _STOP_TOKENS if t in specials]
    return tuple(dict.fromkeys(ids))

  @property
  def video_token_id(self) -> int:
    try:
      return self.special_tokens[VIDEO_TOKEN]
    except KeyError:
      raise ValueError(f"this tokenizer has no {VIDEO_TOKEN} token; load it with "
                       "add_video_token=True") from None

  def token_id(self, token: str) -> int:
    try:
      return self.special_tokens[token]
    except KeyError:
      raise KeyError(f"{token!r} is not a special token of this tokenizer; known: "
                     f"{sorted(self.special_tokens)[:20]}") from None


# --- Hugging Face / GGUF ------------------------------------------------------------------------


class HFTokenizer(Tokenizer):
  """A `transformers` tokenizer (tokenizer files or GGUF metadata).

  `thinking`: templates with a reasoning switch (Qwen3's `enable_thinking`) render prompts
  with it; off by default, so the prompt carries Qwen3's empty reasoning block and a short
  video answer follows it directly, in training and at inference alike. Templates without
  the switch ignore it.
  """

  def __init__(self, tok, extra_stop_ids: Sequence[int] = (), thinking: bool = False):
    self.tok = tok
    self.thinking = thinking
    self.bos_id = tok.bos_token_id
    self.eos_id = tok.eos_token_id
    self._pad_id = tok.pad_token_id
    self._extra_stops = tuple(extra_stop_ids)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(self.tok.encode(text, add_special_tokens=add_special_tokens))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    if not self.tok.chat_template:
      raise ValueError("this tokenizer has no chat template; use a chat/instruct checkpoint or "
                       "set tokenizer.tok.chat_template")
    return self.tok.apply_chat_template(messages, tokenize=False,
                                        add_generation_prompt=add_generation_prompt,
                                        enable_thinking=self.thinking)

  def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
    self.tok.add_special_tokens({"additional_special_tokens": list(tokens)},
                                replace_extra_special_tokens=False)
    return [self.tok.convert_tokens_to_ids(t) for t in tokens]

  @property
  def special_tokens(self) -> dict[str, int]:
    return {t.content: i for i, t in self.tok.added_tokens_decoder.items() if t.special}

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return tuple(dict.fromkeys(super().stop_ids + self._extra_stops))

  @property
  def vocab_size(self) -> int:
    return len(self.tok)

  def save(self, out_dir: str | os.PathLike) -> None:
    self.tok.save_pretrained(str(out_dir))


def has_hf_files(path: str | os.PathLike) -> bool:
  p = pathlib.Path(path)
  return any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def _generation_stops(path: pathlib.Path) -> list[int]:
  f = path / "generation_config.json"
  if not f.exists():
    return []
  eos = json.loads(f.read_text()).get("eos_token_id")
  return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def from_hf(source: str | os.PathLike) -> HFTokenizer:
  """A directory with tokenizer files, or a hub id (its tokenizer files only, from the hub
  cache or the hub; offline and uncached, one line saying how to provide them)."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  path = files.model_dir(source, files.TOKENIZER_PATTERNS)
  if path.is_dir() and not has_hf_files(path):
    raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json / "
                            "tokenizer_config.json / vocab.json)")
  tok = AutoTokenizer.from_pretrained(str(path))
  return HFTokenizer(tok, _generation_stops(path) if path.is_dir() else ())


# Pre-tokenisation splits by the GGUF `tokenizer.ggml.pre` name; names not listed split like
# GPT-2 (ByteLevel's own regex), as SmolLM2's "smollm" does.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_SPLITS = {"llama3": LLAMA3_PATTERN, "llama-bpe": LLAMA3_PATTERN, "llama-v3": LLAMA3_PATTERN,
               "qwen2": None, "deepseek-r1-qwen": None}  # None: QWEN_PATTERN (below)
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def _gguf_metadata(file: pathlib.Path) -> dict:
  from gguf import GGUFReader  # pylint: disable=g-import-not-at-top
  try:
    fields = GGUFReader(str(file)).fields
  except Exception as e:  # noqa: BLE001 - the reader raises many types for a damaged file
    raise ValueError(f"{file} is not a readable GGUF file ({type(e).__name__}: {e})") from None
  return {k: f.contents() for k, f in fields.items()
          if k.startswith("tokenizer.") and not k.endswith(("scores", "precompiled_charsmap"))}


def from_gguf(file: str | os.PathLike) -> HFTokenizer:
  """The tokenizer in a GGUF file's metadata. Parsing the metadata takes seconds, so the built
  tokenizer is cached as HF files keyed by the GGUF file's path, size and mtime."""
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  file = pathlib.Path(file).expanduser()
  if not file.exists():
    raise FileNotFoundError(f"GGUF file {file} does not exist")
  st = file.stat()
  key = hashlib.sha1(f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
  cached = assets.cache_dir() / "tokenizers" / f"{file.stem}-{key}"
  if not (cached / "tokenizer.json").exists():
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    build_from_gguf(file).save(tmp)
    try:
      tmp.replace(cached)
    except OSError:  # another process cached it first
      shutil.rmtree(tmp, ignore_errors=True)
  # read back with the class that wrote it: AutoTokenizer's class lookup alone costs ~2 s
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  return HFTokenizer(PreTrainedTokenizerFast.from_pretrained(str(cached)))


def build_from_gguf(file: str | os.PathLike) -> HFTokenizer:
  """The byte-level BPE tokenizer a GGUF file's metadata describes (vocabulary, merges, special
  and user-defined tokens, pre-tokeniser, chat template), built with the `tokenizers` library."""
  from tokenizers import AddedToken, Regex, decoders, models  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer as Backend  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  file = pathlib.Path(file).expanduser()
  if not file.exists():
    raise FileNotFoundError(f"GGUF file {file} does not exist")
  meta = _gguf_metadata(file)
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{file}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') "
                     "tokenizers are read from GGUF files. Pass the model's Hugging Face "
                     "tokenizer directory as model.tokenizer instead")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  alphabet = _byte_chars()
  spelled = set(alphabet.values())
  vocab = {(t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode())): i
           for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
  backend = Backend(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
  pre = meta.get("tokenizer.ggml.pre")
  if pre in GGUF_SPLITS:
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_SPLITS[pre] or QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  else:
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)))
  backend.decoder = decoders.ByteLevel()
  # control tokens spelled outside the byte alphabet are llama.cpp mislabels: not added
  backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                              for t, k in zip(tokens, types)
                              if k == _GGUF_CONTROL and set(t) <= spelled])
  backend.add_tokens([AddedToken(t, normalized=False, special=False)
                      for t, k in zip(tokens, types) if k == _GGUF_USER_DEFINED])

  def token(key: str) -> str | None:
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

  tok = PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token=token("bos"), eos_token=token("eos"),
      unk_token=token("unknown"), pad_token=token("padding"),
      add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
      add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
      chat_template=meta.get("tokenizer.chat_template"))
  return HFTokenizer(tok)


def _byte_chars() -> dict[int, str]:
  """Byte → printable character of byte-level BPE vocabularies (GPT-2's alphabet)."""
  from transformers.convert_slow_tokenizer import bytes_to_unicode  # pylint: disable=g-import-not-at-top
  return bytes_to_unicode()


# --- Qwen tiktoken -------------------------------------------------------------------------------

# Qwen / Qwen2 pre-tokenisation: like GPT-4's but digits split one by one.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids follow the 151,643 ranks

# ChatML as Qwen2 instruct models use it: a default system turn when none is given.
CHATML_TEMPLATE = (
    "{% if not messages or messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."


class TiktokenTokenizer(Tokenizer):
  """Qwen's byte-level BPE from a `.tiktoken` rank file, with ChatML."""

  def __init__(self, rank_file: str | os.PathLike, specials: Sequence[str] = QWEN_SPECIALS,
               pattern: str = QWEN_PATTERN, default_system: str = QWEN_DEFAULT_SYSTEM):
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=g-import-not-at-top
    self.rank_file = pathlib.Path(rank_file).expanduser()
    if not self.rank_file.exists():
      raise FileNotFoundError(f"tiktoken rank file {self.rank_file} does not exist")
    try:
      self._ranks = load_tiktoken_bpe(str(self.rank_file))
    except Exception as e:
      raise ValueError(f"{self.rank_file} is not a tiktoken rank file: {e}") from None
    self.pattern = pattern
    self.default_system = default_system
    n = len(self._ranks)
    self._specials = {t: n + i for i, t in enumerate(specials)}
    self._build()
    self.eos_id = self._specials.get("<|im_end|>")
    self._pad_id = self._specials.get("<|endoftext|>")
    import jinja2.sandbox  # pylint: disable=g-import-not-at-top
    self._template = jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(CHATML_TEMPLATE)

  def _build(self):
    import tiktoken  # pylint: disable=g-import-not-at-top
    self.enc = tiktoken.Encoding(f"tiktoken:{self.rank_file.name}", pat_str=self.pattern,
                                 mergeable_ranks=self._ranks, special_tokens=dict(self._specials))

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # Qwen adds no bos/eos
    return self.enc.encode(text, allowed_special="all")

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    ids = [int(i) for i in ids]
    if skip_special_tokens:
      special = set(self._specials.values())
      ids = [i for i in ids if i not in special]
    return self.enc.decode(ids)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                 default_system=self.default_system)

  def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
    for t in tokens:
      if t not in self._specials:
        self._specials[t] = len(self._ranks) + len(self._specials)
    self._build()
    return [self._specials[t] for t in tokens]

  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(self._specials)

  @property
  def vocab_size(self) -> int:
    return len(self._ranks) + len(self._specials)

  def to_hf(self):
    """The same tokenizer as a `transformers` fast tokenizer (BPE merges derived from ranks)."""
    from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
    from transformers.convert_slow_tokenizer import TikTokenConverter  # pylint: disable=g-import-not-at-top
    specials = sorted(self._specials, key=self._specials.get)
    backend = TikTokenConverter(str(self.rank_file), pattern=self.pattern,
                                extra_special_tokens=specials).converted()
    template = CHATML_TEMPLATE.replace("{{ default_system }}", self.default_system)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=template, extra_special_tokens=[t for t in specials
                                                       if t not in ("<|im_end|>",
                                                                    "<|endoftext|>")])

  def save(self, out_dir: str | os.PathLike) -> None:
    self.to_hf().save_pretrained(str(out_dir))


# --- entry point ---------------------------------------------------------------------------------


def load(spec: str | os.PathLike, add_video_token: bool = False) -> Tokenizer:
  """`spec`: an offline asset name (`qwen_tiktoken`, `smollm2_135m_instruct_gguf`), `gguf:NAME`,
  a `.gguf` / `.tiktoken` file, a directory with HF tokenizer files, or a hub id."""
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  s = assets.resolve(spec)
  if s.endswith(".gguf"):
    tok = from_gguf(s)
  elif s.endswith(".tiktoken"):
    tok = TiktokenTokenizer(s)
  else:
    p = pathlib.Path(s).expanduser()
    if not p.is_dir() and (p.exists() or s.startswith((".", "/", "~")) or s.count("/") != 1):
      raise FileNotFoundError(f"no tokenizer at {s!r}: expected an asset name, a .gguf or "
                              ".tiktoken file, a directory with tokenizer files, or a hub id")
    tok = from_hf(s)
  if add_video_token:
    tok.add_special_tokens([VIDEO_TOKEN])
  return tok
