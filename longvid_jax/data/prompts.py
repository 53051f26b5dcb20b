"""Prompt building: chat template, `<video>` expansion and the answer-only loss mask.

The user turn opens with the video's text: one `<video>` placeholder, or one per frame with the
frame's time before it (`video_text`). The placeholders become `num_visual` copies of the
tokenizer's video token id, split evenly between them in order; the multimodal model replaces
them with visual embeddings, time-major. Only the assistant's answer (and its end-of-turn marker)
is a training target.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

VIDEO = "<video>"
TIMESTAMP_STYLES = ("sentence", "interleaved", "numbered")
PER_FRAME_STYLES = ("interleaved", "numbered")  # a label before each frame's own tokens
RATIONALE_END = ":"  # closes the evidence an answer cites (`with_rationale`) before the answer


class ChatTokenizer(Protocol):
  video_token_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool) -> str: ...


def clock(seconds: float) -> str:
  """mm:ss.d, the minutes:seconds that questions about a moment use, to a tenth."""
  tenths = int(round(seconds * 10))
  return f"{tenths // 600:02d}:{tenths % 600 // 10:02d}.{tenths % 10}"


def timestamp_sentence(timestamps: list[float], duration: float) -> str:
  """Frame times as mm:ss.d: a question asking "what is shown at 00:38" compares digits of the
  same form, not 38 against 37.5 seconds."""
  times = ", ".join(clock(t) for t in timestamps)
  return (f"This video samples {len(timestamps)} frames of a {duration:.1f}-second video "
          f"at {times}.")


def video_text(timestamps: Sequence[float] | None = None, duration: float = 0.0,
               style: str = "sentence") -> str:
  """What stands for the video in the user turn. "sentence": the placeholder, then one sentence
  of frame times; "interleaved": each frame's time right before its own tokens, so a question
  about a moment (or about which came first) finds the frame beside its time, not by counting
  frames along a list; "numbered": the same with the frame's number first ("frame 3 00:12.5"),
  the name an answer's rationale cites it by (`with_rationale`). None: the placeholder alone."""
  if timestamps is None:
    return VIDEO
  if style == "sentence":
    return VIDEO + "\n" + timestamp_sentence(list(timestamps), duration)
  if style == "interleaved":
    return "\n".join(f"{clock(t)} {VIDEO}" for t in timestamps)
  if style == "numbered":
    return "\n".join(f"frame {k} {clock(t)} {VIDEO}" for k, t in enumerate(timestamps, 1))
  raise ValueError(f"timestamp style {style!r}; set one of {TIMESTAMP_STYLES}")


def evidence_frames(timestamps: Sequence[float], evidence: Sequence[Sequence[float]],
                    fps: float) -> list[int | None]:
  """Per evidence range [start, end) of source frames at `fps`: the number (from 1) of the last
  sampled frame inside it; the last, so that a range ending at a moment ("what is shown at
  00:37?", from its shot's start) cites the frame nearest that moment. A range no sampled frame
  falls in cites the first one after its start (the asked shot may be sampled just after the
  asked moment), or None when there is none."""
  idx = np.round(np.asarray(timestamps, np.float64) * fps).astype(int)
  out = []
  for a, b in evidence:
    inside = np.flatnonzero((idx >= a) & (idx < b))
    after = np.flatnonzero(idx >= a)
    out.append(int(inside[-1]) + 1 if len(inside) else int(after[0]) + 1 if len(after) else None)
  return out


def with_rationale(answer: str, frames: Sequence[int | None]) -> str:
  """The answer after the frames that show its evidence: "frames 5, 2: after". A small LLM
  learns "which frame shows X" as readily as "what colour is X"; comparing two cited frame
  numbers is then a lookup, where comparing two places in the video was never learned."""
  return f"{rationale(frames)} {answer}"


def rationale(frames: Sequence[int | None]) -> str:
  """ "frames 5, 2:": what an answer opens with, and what eval generates before the options."""
  return cite(frames) + RATIONALE_END


def cite(frames: Sequence[int | None]) -> str:
  """ "frame 3", "frames 5, 2": frame numbers as a rationale names them."""
  if not frames:
    raise ValueError("a rationale cites at least one evidence range; this answer has none")
  names = ["none" if f is None else str(f) for f in frames]
  return f"frame {names[0]}" if len(names) == 1 else f"frames {', '.join(names)}"


def user_text(question: str, video: str = VIDEO, question_first: bool = False) -> str:
  """The video, then the question. `question_first` also puts the question before the video:
  in a causal LLM a frame's tokens can then see what is asked and mark themselves as the answer's
  evidence, where after the video only the answer's position can look back for it."""
  text = video + "\n" + question
  return question + "\n" + text if question_first else text


def messages(question: str, video: str = VIDEO, system: str | None = None,
             question_first: bool = False) -> list[dict]:
  """The user turn; `system` replaces the template's default system turn (None keeps it). A
  short one saves tokens on every example: SmolLM2's default is 17 tokens."""
  user = [{"role": "user", "content": user_text(question, video, question_first)}]
  return user if system is None else [{"role": "system", "content": system}] + user


def encode_prompt(tok: ChatTokenizer, question: str, num_visual: int,
                  video: str = VIDEO, system: str | None = None,
                  question_first: bool = False) -> list[int]:
  """Token ids of the prompt up to the assistant's turn, placeholders expanded."""
  text = tok.apply_chat_template(messages(question, video, system, question_first),
                                 add_generation_prompt=True)
  return _expand(tok, text, num_visual)


def _expand(tok: ChatTokenizer, text: str, num_visual: int) -> list[int]:
  """Token ids of rendered text whose k placeholders become num_visual / k video tokens each."""
  parts = text.split(VIDEO)
  k = len(parts) - 1
  if k < 1:
    raise ValueError(f"the prompt must contain a {VIDEO} placeholder: {text!r}")
  if num_visual % k:
    raise ValueError(f"{num_visual} visual tokens do not split evenly between {k} frames; "
                     "interleaved timestamps need a reducer that keeps frames apart")
  ids = tok.encode(parts[0])
  for part in parts[1:]:
    ids += [tok.video_token_id] * (num_visual // k) + tok.encode(part)
  return ids


def query_mask(prompt_ids: list[int], video_token_id: int) -> np.ndarray:
  """1 on the prompt tokens after the last placeholder (the question and the template's turn
  markers): what a text-guided reducer may look at. Never covers an answer."""
  ids = np.asarray(prompt_ids)
  mask = np.zeros(len(ids), np.int32)
  vid = np.flatnonzero(ids == video_token_id)
  mask[(vid[-1] + 1 if len(vid) else 0):] = 1
  return mask


def encode_example(tok: ChatTokenizer, question: str, answer: str, num_visual: int,
                   seq_len: int, video: str = VIDEO, system: str | None = None,
                   question_first: bool = False) -> dict[str, np.ndarray]:
  """One question and its answer: a conversation of one turn."""
  return encode_conversation(tok, [(question, answer)], num_visual, seq_len, video, system,
                             question_first=question_first)


def encode_conversation(tok: ChatTokenizer, turns: Sequence[tuple[str, str]], num_visual: int,
                        seq_len: int, video: str = VIDEO,
                        system: str | None = None,
                        max_targets: int | None = None,
                        question_first: bool = False) -> dict[str, np.ndarray]:
  """input_ids / attention_mask / loss_mask / query_mask [seq_len], right-padded.

  The video's text (`video_text`) opens the first user turn; every answer and its end-of-turn
  marker is a target, so one sequence trains several answers for the cost of one video prefix.
  `question_first` puts the first turn's question before the video too (`user_text`), as a
  one-question prompt asks it; later turns follow the video. The query mask covers the
  questions after the video and never an answer. With `max_targets`, `target_index[max_targets]`
  lists the target tokens' positions (0 pads: position 0 is never a target), so the loss can run
  the LM head on those positions only."""
  if not turns:
    raise ValueError("a conversation needs at least one (question, answer) turn")
  msgs: list[dict] = []
  ids: list[int] = []
  loss: list[int] = []
  query: list[int] = []
  rendered = ""
  for i, (question, answer) in enumerate(turns):
    msgs += (messages(question, video, system, question_first) if i == 0
             else [{"role": "user", "content": question}])
    prefix = tok.apply_chat_template(msgs, add_generation_prompt=True)
    msgs.append({"role": "assistant", "content": answer})
    full = tok.apply_chat_template(msgs, add_generation_prompt=False)
    if not prefix.startswith(rendered) or not full.startswith(prefix):
      raise ValueError("chat template renders earlier turns differently once later turns are "
                       "added; train on one turn per example (data.qa_turns=1)")
    if i == 0:  # the rendered prefix is the prompt encode_prompt would render again
      prompt = _expand(tok, prefix, num_visual)
      asked = query_mask(prompt, tok.video_token_id).tolist()
    else:
      prompt = tok.encode(prefix[len(rendered):])
      asked = [1] * len(prompt)
    target = tok.encode(full[len(prefix):])
    ids += prompt + target
    loss += [0] * len(prompt) + [1] * len(target)
    query += asked + [0] * len(target)
    rendered = full
  n = len(ids)
  if n > seq_len:
    raise ValueError(f"example needs {n} tokens ({num_visual} visual, {len(turns)} turns) but "
                     f"seq_len is {seq_len}; raise data.seq_len, ask fewer turns or compress the "
                     "video more")
  out = {
      "input_ids": np.full(seq_len, tok.pad_id, np.int32),
      "attention_mask": np.zeros(seq_len, np.int32),
      "loss_mask": np.zeros(seq_len, np.int32),
      "query_mask": np.zeros(seq_len, np.int32),
  }
  out["input_ids"][:n] = ids
  out["attention_mask"][:n] = 1
  out["loss_mask"][:n] = loss
  out["query_mask"][:n] = query
  if max_targets is not None:
    where = np.flatnonzero(out["loss_mask"])
    if len(where) > max_targets:
      raise ValueError(f"example has {len(where)} target tokens but data.max_targets is "
                       f"{max_targets}; raise data.max_targets or set it to None")
    out["target_index"] = np.zeros(max_targets, np.int32)
    out["target_index"][:len(where)] = where
  return out
