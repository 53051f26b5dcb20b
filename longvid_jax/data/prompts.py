"""Prompt building: chat template, `<video>` expansion and the answer-only loss mask.

The `<video>` placeholder in the user turn becomes `num_visual` copies of the tokenizer's video
token id; the multimodal model replaces them with visual embeddings. Only the assistant's answer
(and its end-of-turn marker) is a training target.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

VIDEO = "<video>"


class ChatTokenizer(Protocol):
  video_token_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool) -> str: ...


def timestamp_sentence(timestamps: list[float], duration: float) -> str:
  times = ", ".join(f"{t:.1f}" for t in timestamps)
  return (f"This video samples {len(timestamps)} frames of a {duration:.1f}-second video "
          f"at {times} seconds.")


def user_text(question: str, preamble: str | None = None) -> str:
  return VIDEO + "\n" + (preamble + "\n" if preamble else "") + question


def messages(question: str, preamble: str | None = None,
             system: str | None = None) -> list[dict]:
  """The user turn; `system` replaces the template's default system turn (None keeps it). A
  short one saves tokens on every example: SmolLM2's default is 17 tokens."""
  user = [{"role": "user", "content": user_text(question, preamble)}]
  return user if system is None else [{"role": "system", "content": system}] + user


def encode_prompt(tok: ChatTokenizer, question: str, num_visual: int,
                  preamble: str | None = None, system: str | None = None) -> list[int]:
  """Token ids of the prompt up to the assistant's turn, placeholders expanded."""
  text = tok.apply_chat_template(messages(question, preamble, system), add_generation_prompt=True)
  parts = text.split(VIDEO)
  if len(parts) != 2:
    raise ValueError(f"the prompt must contain exactly one {VIDEO} placeholder: {text!r}")
  return tok.encode(parts[0]) + [tok.video_token_id] * num_visual + tok.encode(parts[1])


def query_mask(prompt_ids: list[int], video_token_id: int) -> np.ndarray:
  """1 on the prompt tokens after the last placeholder (the question and the template's turn
  markers): what a text-guided reducer may look at. Never covers an answer."""
  ids = np.asarray(prompt_ids)
  mask = np.zeros(len(ids), np.int32)
  vid = np.flatnonzero(ids == video_token_id)
  mask[(vid[-1] + 1 if len(vid) else 0):] = 1
  return mask


def encode_example(tok: ChatTokenizer, question: str, answer: str, num_visual: int,
                   seq_len: int, preamble: str | None = None,
                   system: str | None = None) -> dict[str, np.ndarray]:
  """input_ids / attention_mask / loss_mask / query_mask [seq_len], right-padded."""
  turns = messages(question, preamble, system)
  prefix = tok.apply_chat_template(turns, add_generation_prompt=True)
  full = tok.apply_chat_template(turns + [{"role": "assistant", "content": answer}],
                                 add_generation_prompt=False)
  if not full.startswith(prefix):
    raise ValueError("chat template renders the answer turn inconsistently with the prompt")
  prompt = encode_prompt(tok, question, num_visual, preamble, system)
  target = tok.encode(full[len(prefix):])
  ids = prompt + target
  if len(ids) > seq_len:
    raise ValueError(f"example needs {len(ids)} tokens ({num_visual} visual) but seq_len is "
                     f"{seq_len}; raise data.seq_len or compress the video more")
  n = len(ids)
  out = {
      "input_ids": np.full(seq_len, tok.pad_id, np.int32),
      "attention_mask": np.zeros(seq_len, np.int32),
      "loss_mask": np.zeros(seq_len, np.int32),
      "query_mask": np.zeros(seq_len, np.int32),
  }
  out["input_ids"][:n] = ids
  out["attention_mask"][:n] = 1
  out["loss_mask"][len(prompt):n] = 1
  out["query_mask"][:len(prompt)] = query_mask(prompt, tok.video_token_id)
  return out
