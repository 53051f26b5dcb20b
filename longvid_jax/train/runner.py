"""The experiment runner: a recipe's stages in order, each starting from the previous one.

Layout of a workdir:
  run.log                 everything logged
  summary.json            per stage: status, steps, first/final loss, seconds
  <i>_<stage>/checkpoints Orbax train states (resume)
  <i>_<stage>/params      the stage's final params (the next stage starts here)
  <i>_<stage>/metrics.jsonl, tensorboard/, DONE.json
Rerunning skips stages with DONE.json and resumes an interrupted stage from its checkpoint.
DONE.json is written only after the stage's params are committed, so it always names usable params.

Preemption: SIGTERM or SIGINT saves a checkpoint at the next step boundary and returns normally
(exit code 0) with the stage's status "preempted" and the log line "preempted at step N; rerun
the same command to resume". SIGKILL at any moment leaves the last committed checkpoint usable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Callable

import jax

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.data import clips, pipeline
from longvid_jax.models import build
from longvid_jax.models.reducers.base import Autoencoder
from longvid_jax.parallel import distributed
from longvid_jax.parallel import mesh as mesh_lib
from longvid_jax.train import checkpoint, losses
from longvid_jax.train import stage as stage_lib

log = logging.getLogger(__name__)


def stage_dir(workdir: pathlib.Path, index: int, name: str) -> pathlib.Path:
  return workdir / f"{index + 1}_{name}"


def with_untrained_reducer(scfg, model, params):
  """A reducer with weights but no objective of its own (Perceiver, FiLA, LongVU's query map)
  learns wherever the projector does; the paper's SVC is pretrained and stays as its stage set."""
  if (isinstance(model.reducer, Autoencoder) or not params.get("reducer")
      or "projector" not in scfg.trainable or "reducer" in scfg.trainable):
    return scfg
  scfg = scfg.copy_and_resolve_references()
  scfg.trainable = (*scfg.trainable, "reducer")
  return scfg


def _log_to(workdir: pathlib.Path) -> logging.Handler:
  handler = logging.FileHandler(workdir / "run.log")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  logging.getLogger().addHandler(handler)
  return handler


def run(config, workdir: str | pathlib.Path) -> dict:
  """Run (or finish) every stage of `config.recipe`; returns and writes the summary."""
  config_lib.validate_fields(config)  # types and ranges: no JAX needed
  distributed.initialize(config)  # before any JAX computation
  config_lib.validate(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  handler = _log_to(workdir)
  try:
    return _run(config, workdir)
  finally:
    logging.getLogger().removeHandler(handler)
    handler.close()


def _run(config, workdir: pathlib.Path) -> dict:
  checkpoint.write_json_atomic(workdir / "config.json", json.loads(config.to_json_best_effort()))
  t0 = time.time()
  recipe = list(config.recipe)
  results: list[stage_lib.StageResult] = []
  done = [_done(stage_dir(workdir, i, n)) for i, n in enumerate(recipe)]
  first = done.index(None) if None in done else len(recipe)
  for i in range(first):  # finished stages: nothing to build
    results.append(done[i])
    log.info("stage %d/%d %s: already done, skipping", i + 1, len(recipe), recipe[i])
  budget = None
  if first < len(recipe):
    with stage_lib.PreemptionGuard() as guard:
      trained, budget = _train(config, workdir, recipe, first, guard)
      results += trained
  preempted = any(r.status == "preempted" for r in results)
  summary = {
      "workdir": str(workdir),
      "stages": [dataclasses.asdict(r) for r in results],
      "final_params": str(stage_dir(workdir, len(recipe) - 1, recipe[-1]) / "params"),
      "seconds": round(time.time() - t0, 2),
      "preempted": preempted,
      **({"visual_tokens": budget} if budget else {}),
  }
  checkpoint.write_json_atomic(workdir / "summary.json", summary)
  return summary


def _done(sdir: pathlib.Path) -> stage_lib.StageResult | None:
  """The stage's DONE.json record, or None if it has none (or an unreadable one)."""
  path = sdir / "DONE.json"
  if not path.exists():
    return None
  try:
    return stage_lib.StageResult(**json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    log.warning("%s is unreadable (%s); running that stage again from its checkpoint", path, e)
    return None


def _train(config, workdir: pathlib.Path, recipe: list[str], first: int,
           preempted: Callable[[], bool] = lambda: False):
  """Stages first..end; stage `first` starts from the previous stage's params (or init)."""
  s = runs.setup(config)
  model = s.model
  budget = build.token_budget(model, config)
  log.info("visual tokens: %s", build.describe_budget(budget))
  # the LLM's resolved shape: opening the run later needs no look at the weights it started from
  checkpoint.write_json_atomic(workdir / runs.LLM_CONFIG, model.llm.cfg.to_dict())
  batch_sharding = mesh_lib.batch_sharding(s.mesh)
  results = []
  with s.scope():
    if first == 0:
      params = s.init_params()
    else:
      params = s.load_params(stage_dir(workdir, first - 1, recipe[first - 1]) / "params")
    for i in range(first, len(recipe)):
      name, scfg = recipe[i], config.stages[recipe[i]]
      sdir = stage_dir(workdir, i, name)
      if preempted():
        note = "preempted before it started; rerun the same command to resume"
        log.warning("stage %s: %s", name, note)
        results.append(stage_lib.StageResult(name, "preempted", note=note))
        break
      if not losses.applies(scfg.loss, model):
        result = stage_lib.StageResult(name, "skipped", note=(
            f"reducer {config.model.reducer.name!r} has no reconstruction objective"))
        sdir.mkdir(parents=True, exist_ok=True)
        checkpoint.save_params(sdir / "params", params)
        checkpoint.write_json_atomic(sdir / "DONE.json", dataclasses.asdict(result))
        results.append(result)
        continue
      scfg = with_untrained_reducer(scfg, model, params)
      data = config_lib.stage_data(config, scfg, name)
      tokens = (f" of {data.seq_len}-token examples" if losses.LOSSES.get(scfg.loss).needs_text
                else "")
      log.info("stage %d/%d %s: %d steps%s, training %s", i + 1, len(recipe), name, scfg.steps,
               tokens, ", ".join(scfg.trainable))
      # content samplers choose with the encoder as the stage starts (a cache already chose)
      describe = (s.describer(params) if clips.reads_features(data) and not data.features
                  else None)
      ds = pipeline.dataset(data, scfg.task, s.tokenizer, s.num_visual, scfg.batch_size,
                            seed=config.seed + i, process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            # keys the feature cache to this encoder (None: no cache)
                            encoder_fingerprint=(s.encoder_fingerprint(params)
                                                 if config.data.features else None),
                            describe=describe)
      put = lambda b: distributed.put_batch(b, batch_sharding)  # noqa: E731
      params, result = stage_lib.run_stage(
          name, i, len(recipe), scfg, model, params,
          lambda start: pipeline.iterate(ds, start), sdir,
          seed=config.seed + 1000 * (i + 1), put_batch=put, preempted=preempted)
      results.append(result)
      if result.status == "preempted":  # run_stage logged where; the rest waits for a rerun
        break
      log.info("stage %s done: loss %.4f → %.4f in %.1f s", name, result.first_loss,
               result.final_loss, result.seconds)
  return results, budget
