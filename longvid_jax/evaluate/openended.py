"""Scoring free-form answers (ActivityNet-QA, CLEVRER's descriptive questions).

A reply is right by exact match (case and surrounding space aside) or by normalised match (also
punctuation, articles and spacing aside, number words as digits), and optionally by a judge: a
text-only LLM the user names, asked whether the reply means the reference answer. The judge's
verdict is the likelier of its "yes" and "no" as the first word of its reply, so it needs no
parsing and is deterministic.
"""

from __future__ import annotations

import re
import string

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def normalise(text: str) -> str:
  t = text.lower().strip()
  t = t.translate(str.maketrans({c: " " for c in string.punctuation}))
  t = _ARTICLES.sub(" ", t)
  return " ".join(_NUMBERS.get(w, w) for w in t.split())


def exact(reply: str, answer: str) -> bool:
  return reply.strip().casefold() == answer.strip().casefold()


def match(reply: str, answer: str) -> bool:
  return normalise(reply) == normalise(answer)


def majority_rate(answers: list[str]) -> float:
  """The accuracy of always giving the most common (normalised) answer: the chance level of an
  open-ended task, since a model that ignores the video can reach it."""
  if not answers:
    return 0.0
  _, counts = np.unique([normalise(a) for a in answers], return_counts=True)
  return float(counts.max() / len(answers))


JUDGE_PROMPT = ("Someone answered a question about a video.\n"
                "Question: {question}\nReference answer: {answer}\nTheir answer: {reply}\n"
                "Does their answer mean the same as the reference answer? Reply yes or no.")


class Judge:
  """A text-only LLM (a Hugging Face directory or hub id, or a GGUF file, with its tokenizer)
  that decides whether a reply means the reference answer."""

  def __init__(self, source: str):
    import jax  # pylint: disable=g-import-not-at-top
    from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
    from longvid_jax.models.llm import DecoderLM  # pylint: disable=g-import-not-at-top
    params, cfg, tok = hf.import_llm(source)
    if tok is None:
      raise ValueError(f"judge {source}: no tokenizer found beside the weights; the judge "
                       "reads prompts through its chat template")
    self.source, self.tok, self.params = str(source), tok, params
    model = DecoderLM(cfg)
    self.yes, self.no = self._first_tokens("yes"), self._first_tokens("no")
    if set(self.yes) & set(self.no):
      raise ValueError(f"judge {source}: its tokenizer starts 'yes' and 'no' with the same token")

    def last_logp(p, ids, mask):
      embeds = model.apply({"params": p}, ids, method=DecoderLM.embed)
      positions = jax.numpy.maximum(jax.numpy.cumsum(mask, axis=1) - 1, 0)
      logits = model.apply({"params": p}, embeds, positions, mask, last_only=True)
      return jax.nn.log_softmax(logits[:, -1].astype(jax.numpy.float32), axis=-1)

    self._fn = jax.jit(last_logp)

  def _first_tokens(self, word: str) -> list[int]:
    return sorted({self.tok.encode(w)[0] for w in (word, word.capitalize(), " " + word)
                   if self.tok.encode(w)})

  def p_yes(self, question: str, answer: str, reply: str) -> float:
    """P(yes) / (P(yes) + P(no)) of the judge's first reply token."""
    from longvid_jax.models import generate  # pylint: disable=g-import-not-at-top
    text = JUDGE_PROMPT.format(question=question, answer=answer, reply=reply)
    prompt = self.tok.encode(self.tok.apply_chat_template([{"role": "user", "content": text}]))
    ids, mask = generate.left_pad([prompt], self.tok.pad_id, 16)
    logp = np.asarray(self._fn(self.params, ids, mask))[0]
    yes, no = np.logaddexp.reduce(logp[self.yes]), np.logaddexp.reduce(logp[self.no])
    return float(1.0 / (1.0 + np.exp(no - yes)))

  def __call__(self, question: str, answer: str, reply: str) -> dict:
    p = self.p_yes(question, answer, reply)
    return {"judge": p > 0.5, "judge_p_yes": round(p, 4)}
