"""A trained run as a question answerer: video file → sampled frames → answer.

The checkpoint is anything `runs.open_run` reads (a run's workdir, moved or not, or a params
folder inside one). Frames come from the training clip loader (`data/clips.py`) with the run's
data settings (sampler and its args, fps, frame budget), so the model sees videos the way it was
trained; shot scores for AVS come from the shot cache (`data/shots.py`). Answers come two ways:
greedy generation through the KV cache, or ranking multiple-choice options by the log-likelihood
of each option as the answer.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.data import clips, prompts, records
from longvid_jax.data.clips import Clip
from longvid_jax.models import generate as gen
from longvid_jax.models.llm import DecoderLM, KVCache
from longvid_jax.models.mllm import VideoLLM

log = logging.getLogger(__name__)

PAD_MULTIPLE = 16  # prompt lengths are rounded up to this, so few programs get compiled
TARGET_MULTIPLE = 4  # answer lengths likewise
OPTION_MULTIPLE = 4  # and option rows per batch
RATIONALE_TOKENS = 16  # a generated rationale ("frames 5, 2:") is cut after this many tokens


@dataclasses.dataclass(frozen=True)
class Reply:
  text: str
  ended: bool  # a stop token closed the turn (False: max_new_tokens ran out first)
  tokens: int  # generated, the stop token included


class Predictor:
  """Loads a run once; `ask`, `loglik` and `generate` answer questions about videos."""

  def __init__(self, checkpoint: str | pathlib.Path, sampler: str | None = None,
               num_frames: int | None = None, blind: bool = False, timestamps: bool | None = None):
    run = runs.open_run(checkpoint)
    self.workdir, self.config = run.root, run.config
    config, d = self.config, self.config.data
    if num_frames:
      d.num_frames = int(num_frames)
    if sampler and sampler != d.sampler:
      d.sampler, d.sampler_args = sampler, {}  # the run's options belong to its own sampler
    if timestamps is not None:
      d.timestamps = bool(timestamps)
    self.sampler_name, self.k = d.sampler, int(d.num_frames)
    # multiple choice is scored as the last stage trained it: manifest records as
    # `data.choices` says (Record.text: by default the lettered question answered by the
    # letter), the synthetic source as the bare question answered by the option's text
    last = config.recipe[-1] if config.recipe else None
    trained = config_lib.stage_data(config, config.stages[last], last) if last else d
    self.letters = trained.source == "manifest" and trained.choices == "letters"
    self.blind = blind  # black frames: what the LLM answers from the question alone
    self.timestamps, self.timestamp_style = bool(d.timestamps), d.timestamp_style
    self.system = d.system_prompt  # the system turn it was trained with
    self.question_first = bool(d.get("question_first", False))  # and where it asked
    self.rationale = bool(trained.get("rationale", False))  # answers cite their frames first
    sizes = {**dict(config.mesh), "data": 1}  # one video at a time; model axes stay
    self.setup = s = runs.setup(config, mesh={k: (1 if v == -1 else v) for k, v in sizes.items()})
    self.tok, self.model, self.num_visual = s.tokenizer, s.model, s.num_visual
    self.params = s.load_params(run.params_dir, as_saved=True)
    self.describe = s.describer(self.params) if clips.reads_features(d) else None
    self._features = jax.jit(lambda p, f: self.model.apply({"params": p}, f,
                                                           method=VideoLLM.features))
    self._score_fn = jax.jit(self._option_logprobs)
    self._embed_fn = jax.jit(self._prompt_embeds)
    log.info("loaded %s (%s sampler, k=%d, %d visual tokens)", run.params_dir, self.sampler_name,
             self.k, self.num_visual)

  def use_params(self, path: str | pathlib.Path) -> None:
    """Answer with other params of the same run (a snapshot or another stage's): the compiled
    programs take params as an argument, so nothing compiles again."""
    self.params = self.setup.load_params(path, as_saved=True)
    if self.describe is not None:
      self.describe = self.setup.describer(self.params)

  def _ctx(self):
    return self.setup.scope()

  # -- frames -----------------------------------------------------------------------------------

  def clip(self, video: str, start: float | None = None, end: float | None = None,
           scores: str | None = None) -> Clip:
    """The frames training would take of `video` (or of its [start, end) seconds)."""
    rec = records.Record(id=str(video), video=str(video), start=start, end=end, scores=scores)
    return clips.load_clip(rec, self.config.data, self.describe)

  def features(self, clip: Clip, blank: bool = False) -> jax.Array:
    frames = clip.frames.astype(np.float32)[None] / 255.0
    if self.blind or blank:
      frames = np.zeros_like(frames)
    with self._ctx():
      return self._features(self.params, jnp.asarray(frames))

  def video_text(self, clip: Clip) -> str:
    """The video's part of the prompt, frame times placed as training placed them."""
    return prompts.video_text([float(x) for x in clip.timestamps] if self.timestamps else None,
                              clip.duration, self.timestamp_style)

  # -- scoring ----------------------------------------------------------------------------------

  def choices(self, question: str, options: Sequence[str]) -> tuple[str, list[str]]:
    """(the question as prompted, the targets to rank) of a multiple-choice question, phrased
    as training phrased it."""
    if self.letters:
      return (records.multiple_choice_question(question, options),
              list(records.LETTERS[:len(options)]))
    return question, list(options)

  def _option_logprobs(self, params, feats, ids, mask, qmask, targets, tmask, which):
    """log p(target | video, prompt) per option row. The prompts ids/mask/qmask[Q,L]
    (left-padded) run once into a KV cache; option row r's target tokens targets/tmask[R,M]
    (right-padded) continue prompt which[r]'s cache, so a question costs one prompt pass and
    short tails, and the questions of one video share a batch."""
    llm, variables = self.model.llm, {"params": params["llm"]}
    m = targets.shape[1]
    feats = jnp.broadcast_to(feats, (ids.shape[0], *feats.shape[1:]))
    embeds, emask = self._prompt_embeds(params, feats, ids, mask, qmask)
    positions = jnp.maximum(jnp.cumsum(emask, axis=1) - 1, 0)
    cache = KVCache.init(llm.cfg, ids.shape[0], ids.shape[1] + m)
    last, cache = llm.apply(variables, embeds, positions, emask, cache=cache, last_only=True)
    cache = jax.tree.map(lambda x: x[which] if x.ndim else x, cache)
    tail = llm.apply(variables, targets, method=DecoderLM.embed)
    tpos = positions[which, -1:] + 1 + jnp.arange(m)[None]
    logits, _ = llm.apply(variables, tail, tpos, tmask, cache=cache)
    # the prompt's last logit predicts each target's first token, tail logit j its token j+1
    logits = jnp.concatenate([last[which], logits[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return (tok * tmask).sum(axis=1)

  def _targets(self, question: str, options: Sequence[str], video: str, lead: str = ""):
    """(prompt ids, each option's target ids): the training example `prompts.encode_example`
    builds for that option, split where its loss mask starts. After a `lead` (the generated
    rationale) the split is where the options' rows part: the tokens they share score alike."""
    prompt = prompts.encode_prompt(self.tok, question, self.num_visual, video, self.system,
                                   self.question_first)
    rows = []
    for o in options:
      row = prompts.encode_example(self.tok, question, f"{lead} {o}" if lead else o,
                                   self.num_visual, len(prompt) + 96, video, self.system,
                                   self.question_first)
      if row["input_ids"][:len(prompt)].tolist() != prompt or row["loss_mask"][len(prompt)] != 1:
        raise ValueError(f"the chat template does not render option {o!r} after the same prompt")
      rows.append(row["input_ids"][:int(row["attention_mask"].sum())].tolist())
    if lead:
      n = min(len(r) for r in rows) - 1  # every option keeps at least one target token
      shared = next((i for i in range(len(prompt), n) if len({r[i] for r in rows}) > 1), n)
      prompt = rows[0][:shared]
    return prompt, [np.asarray(r[len(prompt):], np.int32) for r in rows]

  def _padded(self, prompt_ids: Sequence[list[int]]):
    """Left-padded ids, attention mask and question mask of prompts (`prompts.query_mask`)."""
    ids, mask = gen.left_pad(prompt_ids, self.tok.pad_id, PAD_MULTIPLE)
    qmask = np.stack([prompts.query_mask(row.tolist(), self.tok.video_token_id)
                      for row in ids]) * mask
    return ids, mask, qmask

  def leads(self, feats: jax.Array, questions: Sequence[str],
            video: str = prompts.VIDEO) -> list[str]:
    """The rationale each answer opens with ("frames 5, 2:"), generated greedily for all the
    questions about one video in a batch; empty strings for a run trained without one."""
    if not self.rationale:
      return [""] * len(questions)
    built = [prompts.encode_prompt(self.tok, q, self.num_visual, video, self.system,
                                   self.question_first) for q in questions]
    ids, mask, qmask = self._padded(built)
    end = self.tok.encode(prompts.RATIONALE_END)
    with self._ctx():
      feats = jnp.broadcast_to(feats, (len(built), *feats.shape[1:]))
      embeds, emask = self._embed_fn(self.params, feats, jnp.asarray(ids), jnp.asarray(mask),
                                     jnp.asarray(qmask))
      out = gen.generate(self.model.llm, self.params["llm"], embeds, emask,
                         max_new_tokens=RATIONALE_TOKENS, stop_ids=[*end, *self.tok.stop_ids],
                         pad_id=self.tok.pad_id)
    # a rationale cut short (no end marker) is closed, so the options follow it as trained
    return [self.tok.decode(row, skip_special_tokens=True).split(prompts.RATIONALE_END)[0]
            .strip() + prompts.RATIONALE_END for row in out.rows()]

  def loglik_many(self, feats: jax.Array, questions: Sequence[tuple[str, Sequence[str]]],
                  video: str = prompts.VIDEO,
                  leads: Sequence[str] | None = None) -> list[np.ndarray]:
    """`loglik` for several (question, options) about the same video, in one batch; a run
    trained with rationales ranks the options after each question's (`leads`, generated when
    not given)."""
    if leads is None:
      leads = self.leads(feats, [q for q, _ in questions], video)
    built = [self._targets(q, opts, video, lead) for (q, opts), lead in zip(questions, leads)]
    ids, mask, qmask = self._padded([p for p, _ in built])
    rows = [(i, t) for i, (_, targets) in enumerate(built) for t in targets]
    width = -(-max(len(t) for _, t in rows) // TARGET_MULTIPLE) * TARGET_MULTIPLE
    height = -(-len(rows) // OPTION_MULTIPLE) * OPTION_MULTIPLE  # few shapes to compile
    tids = np.full((height, width), self.tok.pad_id, np.int32)
    tmask = np.zeros((height, width), np.int32)
    which = np.zeros(height, np.int32)
    for j, (i, t) in enumerate(rows):
      tids[j, :len(t)], tmask[j, :len(t)], which[j] = t, 1, i
    with self._ctx():
      out = np.asarray(self._score_fn(self.params, feats, jnp.asarray(ids), jnp.asarray(mask),
                                      jnp.asarray(qmask), jnp.asarray(tids), jnp.asarray(tmask),
                                      jnp.asarray(which)))
    bounds = np.cumsum([0] + [len(t) for _, t in built])
    return [out[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]

  def loglik(self, feats: jax.Array, question: str, options: Sequence[str],
             video: str = prompts.VIDEO) -> np.ndarray:
    """Sum of log p(option tokens | video, question) per option, end-of-turn included: the
    targets of the training example `prompts.encode_example` builds for that option."""
    return self.loglik_many(feats, [(question, options)], video)[0]

  # -- generation -------------------------------------------------------------------------------

  def _prompt_embeds(self, params, feats, ids, mask, qmask):
    def f(m: VideoLLM):
      query = m.question(ids, qmask)
      visual, red = m.visual_embeds(feats, query=query, query_mask=qmask)
      return m.splice(ids, mask, visual, red.mask)
    return nn.apply(f, self.model)({"params": params})

  def generate(self, feats: jax.Array, question: str, video: str = prompts.VIDEO,
               max_new_tokens: int = 24) -> Reply:
    prompt = prompts.encode_prompt(self.tok, question, self.num_visual, video, self.system,
                                   self.question_first)
    ids, mask, qmask = self._padded([prompt])
    with self._ctx():
      embeds, emask = self._embed_fn(self.params, feats, jnp.asarray(ids), jnp.asarray(mask),
                                     jnp.asarray(qmask))
      out = gen.generate(self.model.llm, self.params["llm"], embeds, emask,
                         max_new_tokens=max_new_tokens, stop_ids=self.tok.stop_ids,
                         pad_id=self.tok.pad_id)
    row = out.rows()[0]
    return Reply(self.tok.decode(row, skip_special_tokens=True).strip(),
                 ended=bool(row) and row[-1] in self.tok.stop_ids, tokens=len(row))

  def ask(self, video: str, question: str, options: Sequence[str] = (), mode: str = "generate",
          start: float | None = None, end: float | None = None,
          max_new_tokens: int = 48) -> dict:
    """One question about one video; with options, `mode` picks loglik ranking or generation."""
    t0 = time.time()
    clip = self.clip(video, start, end)
    feats = self.features(clip)
    vtext = self.video_text(clip)
    out = {"frames": clip.indices[clip.valid].tolist(), "visual_tokens": self.num_visual}
    if options and mode == "loglik":
      asked, targets = self.choices(question, options)
      lead = self.leads(feats, [asked], vtext)
      scores = self.loglik_many(feats, [(asked, targets)], vtext, lead)[0]
      out.update(answer=options[int(np.argmax(scores))], choice=int(np.argmax(scores)),
                 scores=scores.tolist(), **({"rationale": lead[0]} if lead[0] else {}))
    else:
      prompt = records.multiple_choice_question(question, options) if options else question
      reply = self.generate(feats, prompt, vtext, max_new_tokens)
      # ended: the model closed its turn (a stop token) rather than running out of tokens
      out.update(answer=reply.text, ended=reply.ended, tokens=reply.tokens)
    out["seconds"] = time.time() - t0
    return out
