"""Grain input pipeline for the training stages.

Batch i of a stage is a pure function of (seed, i): the source is shuffled with a fixed seed and
repeated, and per-example randomness is derived from the example's index. Resuming at step s
reads the dataset from index s, which is exactly what an uninterrupted run would have read.

Sources (`data.source`):
  synthetic  procedural shot videos rendered on the fly (the offline default).
  manifest   JSONL `Record`s (`data.manifest`): decode → shot scores (only for samplers that need
             them) → `data.sampler` picks `data.num_frames` frames → resize to `data.image_size`
             → prompt with `<video>` (and the timestamp sentence if `data.timestamps`) →
             tokens, padded to `data.seq_len`. With `data.features` (a feature-cache folder) the
             batch carries the cached encoder `features[B,T,h,w,C]` instead of `frames`.

A bad record (missing or corrupt video, bad manifest line, prompt too long, ...) is skipped and
counted by reason; its slot takes the next good record in the shuffled order, so batches stay a
function of (seed, i) and resumption stays exact. `data.strict = True` raises instead.

Every example carries `record_id` (a string: the manifest record's id, or
"synthetic:<data seed>:<video id>"), so a failing step can name its batch. It is host-side
metadata: the training loop removes it before the batch goes to the device.

Multi-host: each process builds its `batch_size // process_count` rows of every global batch;
concatenating the processes' batches in process order gives the single-process batch.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import logging
import threading
from typing import Any, Sequence

import grain
import numpy as np

from longvid_jax.data import clips, prompts, records, synthetic, tasks, video
from longvid_jax.data import features as features_lib
from longvid_jax.data.records import SPLITS, RecordError
from longvid_jax.sampling import samplers

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "manifest")


# -- synthetic source -----------------------------------------------------------------------------


def split_ids(cfg, split: str) -> np.ndarray:
  """Disjoint video ids per split: val and test take fixed fractions off the end."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: choose one of {SPLITS}")
  n = int(cfg.num_videos)
  n_val = n_test = max(1, int(n * cfg.heldout_fraction))
  bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test),
            "test": (n - n_test, n)}
  lo, hi = bounds[split]
  if hi <= lo:
    raise ValueError(f"data.num_videos={n} leaves no {split} videos; raise num_videos")
  return np.arange(lo, hi)


def video_spec(cfg, video_id: int) -> synthetic.VideoSpec:
  return synthetic.make_spec(int(cfg.seed) * 1_000_003 + int(video_id), cfg.shots_per_video,
                             cfg.frames_per_shot)


def synthetic_frames(cfg, spec: synthetic.VideoSpec, describe=None) -> np.ndarray:
  """The frames `data.sampler` keeps of a synthetic video, chosen by the same rule as a decoded
  one (`clips.select`); samplers that need shot scores get the generator's exact cuts, which
  `make-benchmark --from-config` writes beside each exported video, and content samplers the
  run's descriptors of the rendered frames."""
  ts = np.arange(spec.num_frames) / spec.fps
  needs = samplers.SAMPLERS.get(cfg.sampler).needs
  clips.needs_describer(cfg, describe)
  single = synthetic.cut_scores(spec) if "scores" in needs else None
  features = None
  if "features" in needs:
    size = int(cfg.image_size)
    features = lambda cand: describe(  # noqa: E731
        {"synthetic": repr(spec)}, cand, lambda idx: synthetic.render(spec, size, idx))
  idx, _ = clips.select(cfg, ts, 0.0, spec.num_frames / spec.fps, single, features)
  return idx


RECORD_ID = "record_id"  # batch key of the examples' ids (strings, never sent to the device)


def synthetic_id(cfg, video_id: int) -> str:
  """Names a synthetic video the way `video_spec` derives it, so the id reproduces it."""
  return f"synthetic:{int(cfg.seed)}:{int(video_id)}"


def example(cfg, task: str, tok, num_visual: int, video_id: int, rng: np.random.Generator,
            describe=None):
  spec = video_spec(cfg, video_id)
  frames = synthetic.render(spec, cfg.image_size, synthetic_frames(cfg, spec, describe))
  out = {"frames": frames.astype(np.float32) / 255.0}
  make = tasks.TASKS.get(task).turns
  if make is None:
    return out
  caption = synthetic.caption(spec)
  material = tasks.Material(synthetic.questions(spec),
                            [(p, caption) for p in synthetic.CAPTION_PROMPTS], ordered=False)
  out.update(prompts.encode_conversation(tok, make(material, rng, int(cfg.qa_turns)),
                                         num_visual, cfg.seq_len, system=cfg.system_prompt,
                                         max_targets=cfg.max_targets,
                                         question_first=cfg.question_first))
  return out


# -- manifest source: one record → one example ----------------------------------------------------


def _turns(rec: records.Record, task: str, cfg, rng: np.random.Generator,
           timestamps: Sequence[float] = ()) -> list[tuple[str, str]]:
  if not rec.turns:
    raise RecordError(f"record {rec.id} has no question/answer turns for task {task!r}", "no_text")
  letters = cfg.choices == "letters"
  qa = [rec.text(i, letters) for i in range(len(rec.turns))]
  if cfg.rationale:
    ranges, fps = _evidence(rec)
    qa = [(q, prompts.with_rationale(a, prompts.evidence_frames(timestamps, ev, fps)))
          for (q, a), ev in zip(qa, ranges)]
  # a record's `meta.caption` (the benchmark writes one per video) serves the caption tasks
  caption = rec.meta.get("caption") if isinstance(rec.meta, dict) else None
  captions = [(p, caption) for p in synthetic.CAPTION_PROMPTS] if caption else []
  # a conversation keeps its order; merged questions (data.merge_questions) are drawn at random
  kinds = rec.meta.get("turn_tasks", ()) if isinstance(rec.meta, dict) else ()
  material = tasks.Material(qa, captions, ordered=not cfg.merge_questions, kinds=kinds)
  return tasks.TASKS.get(task).turns(material, rng, int(cfg.qa_turns))


def _evidence(rec: records.Record) -> tuple[list, float]:
  """Each turn's evidence ranges (source frames) and the frame rate they count in, from the
  benchmark's `meta.evidence` / `meta.fps` (merged records: `meta.turn_evidence`)."""
  meta = rec.meta if isinstance(rec.meta, dict) else {}
  ranges = meta.get("turn_evidence") or ([meta["evidence"]] if "evidence" in meta else None)
  if not ranges or len(ranges) != len(rec.turns) or not all(ranges) or not meta.get("fps"):
    raise RecordError(f"record {rec.id} has no meta.evidence and meta.fps for each turn, which "
                      "data.rationale needs (the long-video benchmark writes them); set "
                      "data.rationale=False for other data", "no_evidence")
  return ranges, float(meta["fps"])


class Skips:
  """Bad records seen by this process: one warning per record, a summary every `log_every`
  records and whenever an epoch ends. `counts` maps reason → number of distinct records."""

  def __init__(self, log_every: int = 100):
    self.log_every = max(1, int(log_every))
    self.bad: dict[str, tuple[str, str]] = {}  # record → (reason, message)
    self.counts: collections.Counter = collections.Counter()
    self._lock = threading.Lock()

  def __getstate__(self):  # worker processes get their own copy and lock
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def add(self, where: str, reason: str, message: str) -> None:
    with self._lock:
      if where in self.bad:
        return
      self.bad[where] = (reason, message)
      self.counts[reason] += 1
      n = len(self.bad)
    log.warning("skipping %s (%s): %s", where, reason, message)
    if n % self.log_every == 0:
      log.warning("%s", self.summary())

  def summary(self) -> str:
    parts = ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items())) or "none"
    return f"skipped {sum(self.counts.values())} bad records ({parts})"


class ManifestSource:
  """Records of one split and how to turn record i into an example."""

  def __init__(self, cfg, split: str, task: str, tok, num_visual: int,
               encoder_fingerprint: str | None = None, describe=None):
    self.cfg, self.task, self.tok, self.num_visual = cfg, task, tok, num_visual
    self.describe = describe
    self.strict = bool(cfg.strict)
    self.skips = Skips(cfg.skip_log_every)
    self.records: list[records.Record] = []
    groups, weights = [], []
    for paths, weight in manifest_sources(cfg, split):
      first = len(self.records)
      for path in paths:
        for lineno, rec in records.read_manifest(path):
          if isinstance(rec, ValueError):
            if self.strict:
              raise rec
            self.skips.add(f"{path}:{lineno}", "bad_manifest_line", str(rec))
          else:
            self.records.append(rec)
      groups.append(np.arange(first, len(self.records)))
      weights.append(weight)
    if not self.records:
      raise ValueError(f"the {split} manifest has no usable records ({self.skips.summary()})")
    if cfg.merge_questions:
      self.records, groups = merge_questions(self.records, groups, cfg.choices == "letters")
    self.pool = _mixture(groups, weights, int(cfg.seed))
    self.cache = None
    if cfg.features:
      self.encoder = encoder_fingerprint or cfg.encoder_fingerprint
      if not self.encoder:
        raise ValueError("data.features reads a feature cache, which needs the encoder's "
                         "fingerprint (features.encoder_fingerprint) to reject stale entries: "
                         "pass encoder_fingerprint= or set data.encoder_fingerprint")
      self.cache = features_lib.FeatureCache(cfg.features)

  def __len__(self) -> int:
    return len(self.pool)

  def example(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rec = self.records[i]
    if self.cache is not None:
      key = features_lib.entry_key(rec, self.cfg, self.encoder)
      got = self.cache.get(key)
      if got is None:
        raise RecordError(self.cache.explain_miss(key), "feature_cache_miss")
      out = {"features": got["features"].astype(np.float32)}
      ts, duration = got["timestamps"], float(got["duration"][0])
    else:
      clip = clips.load_clip(rec, self.cfg, self.describe)
      out = {"frames": clip.frames.astype(np.float32) / 255.0}
      ts, duration = clip.timestamps, clip.duration
    if tasks.TASKS.get(self.task).turns is None:
      return out
    ts = [float(t) for t in ts]
    turns = _turns(rec, self.task, self.cfg, rng, ts)
    video = prompts.video_text(ts if self.cfg.timestamps else None,
                               duration, self.cfg.timestamp_style)
    try:
      out.update(prompts.encode_conversation(self.tok, turns, self.num_visual,
                                             int(self.cfg.seq_len), video,
                                             self.cfg.system_prompt, self.cfg.max_targets,
                                             self.cfg.question_first))
    except ValueError as e:
      raise RecordError(str(e), "too_long") from None
    return out


def merge_questions(recs: list[records.Record], groups: list[np.ndarray], letters: bool
                    ) -> tuple[list[records.Record], list[np.ndarray]]:
  """One record per (video, clip) of each group whose turns are its records' questions, phrased
  as `data.choices` says; the first record's scores and meta (its caption) stay, and
  `meta.turn_tasks` names each turn's task, so turns can be drawn evenly across tasks
  (`meta.turn_evidence` its evidence, for `data.rationale`)."""
  merged: list[records.Record] = []
  out_groups = []
  for g in groups:
    first = len(merged)
    by_clip: dict[tuple, list[records.Record]] = {}
    for i in g:
      r = recs[int(i)]
      by_clip.setdefault((r.video, r.start, r.end), []).append(r)
    for (vid, start, end), rs in by_clip.items():
      turns = tuple(r.text(t, letters) for r in rs for t in range(len(r.turns)))
      kinds = [r.task or "" for r in rs for _ in r.turns]
      meta = {**rs[0].meta, "turn_tasks": kinds}
      if all(isinstance(r.meta, dict) and "evidence" in r.meta and len(r.turns) == 1 for r in rs):
        meta["turn_evidence"] = [r.meta["evidence"] for r in rs]
      merged.append(dataclasses.replace(rs[0], id=f"{vid}[{start}:{end}]", turns=turns,
                                        options=(), answer_index=None, task="merged", meta=meta))
    out_groups.append(np.arange(first, len(merged)))
  return merged, out_groups


def _mixture(groups: list[np.ndarray], weights: list[float | None], seed: int) -> np.ndarray:
  """Record indices of one epoch. Unweighted: every record once. Weighted: manifest j fills
  weight_j / Σ weights of an epoch as long as all records together, its records cycled when it
  is short and a fixed random subset (per data.seed) when it is long."""
  if all(w is None for w in weights):
    return np.concatenate(groups)
  total = sum(len(g) for g in groups)
  share = np.asarray(weights, np.float64) / sum(weights)
  pool = []
  for j, (g, w) in enumerate(zip(groups, share)):
    if len(g):
      order = np.random.default_rng([seed, j]).permutation(g)
      pool.append(np.resize(order, max(1, round(w * total))))
  return np.concatenate(pool)


def manifest_sources(cfg, split: str) -> list[tuple[list[str], float | None]]:
  """(manifest files, mixture weight or None) of `data.manifest`: one path / pattern / glob,
  {split: path}, or a mixture [(path, weight), ...] whose paths may hold `{split}`."""
  spec = cfg.manifest
  if isinstance(spec, (list, tuple)):
    return [(manifest_paths(cfg, split, str(path)), float(weight)) for path, weight in spec]
  return [(manifest_paths(cfg, split), None)]


def manifest_paths(cfg, split: str, spec=None) -> list[str]:
  """`data.manifest` (or `spec`): {split: path}, a path with `{split}`, a glob, or one path for
  all splits."""
  spec = cfg.manifest if spec is None else spec
  if not spec:
    raise ValueError("data.source='manifest' needs data.manifest (a JSONL path, a pattern with "
                     "{split}, a mapping split → path, or [(path, weight), ...])")
  if isinstance(spec, (list, tuple)):
    return [p for path, _ in spec for p in manifest_paths(cfg, split, str(path))]
  if not isinstance(spec, str):
    spec = dict(spec)
    if split not in spec:
      raise ValueError(f"data.manifest has no {split!r} entry (it has {sorted(spec)})")
    spec = spec[split]
  spec = str(spec).replace("{split}", split)
  if glob.has_magic(spec):
    paths = sorted(glob.glob(spec))
    if not paths:
      raise FileNotFoundError(f"no manifest matches {spec}")
    return paths
  return [spec]


# -- Grain datasets -------------------------------------------------------------------------------


class _Examples(grain.MapDataset):
  """Example g = the first good record at or after position g of the epoch's shuffled order
  (wrapping around within the epoch)."""

  def __init__(self, order: grain.MapDataset, source: ManifestSource, seed: int):
    super().__init__(order)
    self._order, self._source, self._seed = order, source, int(seed)
    self._epoch = 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._order)

  __getstate__, __setstate__ = Skips.__getstate__, Skips.__setstate__

  def __str__(self) -> str:
    return f"_Examples(records={len(self._source)})"

  def _end_epochs(self, g: int) -> None:
    epoch = g // len(self._source)
    with self._lock:
      ended, self._epoch = self._epoch < epoch, max(self._epoch, epoch)
    if ended and self._source.skips.counts:
      log.warning("epoch %d: %s", epoch - 1, self._source.skips.summary())

  def __getitem__(self, g):
    if isinstance(g, slice):
      return self.slice(g)
    self._end_epochs(g)
    src = self._source
    rng = np.random.default_rng([self._seed, g])
    n = len(src)
    for t in range(n):  # the rest of this epoch's permutation, wrapping around
      i = int(self._order[g - g % n + (g + t) % n])
      rec = src.records[i]
      if rec.id + "@" + rec.video in src.skips.bad:
        continue
      try:
        return {**src.example(i, rng), RECORD_ID: np.asarray(rec.id)}
      except Exception as e:  # noqa: BLE001 - one bad record must not stop the run
        where = f"record {rec.id!r} ({rec.video})"
        if isinstance(e, video.BUGS):
          raise
        if src.strict:
          raise RecordError(f"{where}: {e}", video.error_reason(e)) from e
        src.skips.add(rec.id + "@" + rec.video, video.error_reason(e), f"{where}: {e}")
    raise ValueError(f"every record of the manifest is unusable ({src.skips.summary()})")


class _Rows(grain.MapDataset):
  """This process's rows: local element j is global element (j // m) * B + p * m + j % m."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._m, self._p = batch_size, batch_size // count, index

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._m

  def __str__(self) -> str:
    return f"_Rows(process={self._p}, rows={self._m}/{self._global})"

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    return self._parent[(j // self._m) * self._global + self._p * self._m + j % self._m]


class Batches(grain.MapDataset):
  """The batched dataset (index i = batch i) with what `iterate` and monitoring need: `skips`
  (bad-record statistics of this process, None for synthetic data) and reading options."""

  def __init__(self, parent: grain.MapDataset, skips: Skips | None, options: dict[str, int]):
    super().__init__(parent)
    self.skips, self.options = skips, options

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return "Batches"

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.slice(i)
    return self._parent[i]


def dataset(cfg, task: str, tok, num_visual: int, batch_size: int, seed: int,
            split: str = "train", process_index: int = 0, process_count: int = 1,
            encoder_fingerprint: str | None = None, describe=None) -> Batches:
  """Infinite, batched MapDataset; index i is this process's part of global batch i.
  `describe` (`runs.Setup.describer`) serves the samplers that choose by content."""
  tasks.TASKS.get(task)  # an unknown name lists the known ones
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must lie in [0, {process_count})")
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must divide evenly over {process_count} processes")
  source = cfg.source
  skips = None
  if source == "synthetic":
    ids = split_ids(cfg, split)
    ds = grain.MapDataset.source(ids).shuffle(seed=seed).repeat(None)
    ds = ds.random_map(lambda vid, rng: {**example(cfg, task, tok, num_visual, vid, rng,
                                                   describe),
                                         RECORD_ID: np.asarray(synthetic_id(cfg, vid))},
                       seed=seed)
  elif source == "manifest":
    src = ManifestSource(cfg, split, task, tok, num_visual, encoder_fingerprint, describe)
    skips = src.skips
    order = grain.MapDataset.source(src.pool).shuffle(seed=seed).repeat(None)
    ds = _Examples(order, src, seed)
  else:
    raise ValueError(f"data.source {source!r}: choose one of {SOURCES}")
  if process_count > 1:
    ds = _Rows(ds, batch_size, process_index, process_count)
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  options = {"threads": int(cfg.read_threads), "prefetch": int(cfg.prefetch),
             "workers": int(cfg.workers)}
  return Batches(ds, skips, options)


class BatchIterator(grain.DatasetIterator):
  """Batches start, start+1, ... with background prefetch (threads, and worker processes if
  `data.workers` > 0). The state is the absolute index of the next batch, so a state saved with a
  checkpoint restores the exact sequence whatever `start` the new iterator was made with."""

  def __init__(self, ds: grain.MapDataset, start: int, threads: int = 2, prefetch: int = 4,
               workers: int = 0):
    super().__init__()
    self._ds, self._next = ds, int(start)
    self._threads, self._prefetch, self._workers = threads, prefetch, workers
    self._it = None

  def _open(self):
    it = self._ds[self._next:].to_iter_dataset(
        grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._prefetch))
    if self._workers > 0:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    return iter(it)

  def __next__(self) -> dict:
    if self._it is None:
      self._it = self._open()
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self._next}

  def set_state(self, state: dict[str, Any]) -> None:
    self._stop()
    self._next = int(state["next_batch"])

  def _stop(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None

  def close(self) -> None:
    self._stop()


def iterate(ds: grain.MapDataset, start: int, threads: int | None = None) -> BatchIterator:
  """An iterator from batch `start`; `get_state()` / `set_state()` round-trip through JSON."""
  opts = getattr(ds, "options", {})
  return BatchIterator(ds, start, threads if threads is not None else opts.get("threads", 2),
                       opts.get("prefetch", 4), opts.get("workers", 0))
