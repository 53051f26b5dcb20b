"""The experiment runner: a recipe's stages in order, each starting from the previous one.

Layout of a workdir:
  run.log                 everything logged
  summary.json            per stage: status, steps, first/final loss, seconds
  <i>_<stage>/checkpoints Orbax train states (resume)
  <i>_<stage>/params      the stage's final params (the next stage starts here)
  <i>_<stage>/metrics.jsonl, tensorboard/, DONE.json
Rerunning skips stages with DONE.json and resumes an interrupted stage from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

import flax.linen as nn
import jax

from longvid_jax import config as config_lib
from longvid_jax.data import pipeline
from longvid_jax.models import build
from longvid_jax.parallel import mesh as mesh_lib
from longvid_jax.train import stage as stage_lib

log = logging.getLogger(__name__)


def stage_dir(workdir: pathlib.Path, index: int, name: str) -> pathlib.Path:
  return workdir / f"{index + 1}_{name}"


def _log_to(workdir: pathlib.Path) -> logging.Handler:
  handler = logging.FileHandler(workdir / "run.log")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  logging.getLogger().addHandler(handler)
  return handler


def run(config, workdir: str | pathlib.Path) -> dict:
  """Run (or finish) every stage of `config.recipe`; returns and writes the summary."""
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
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  t0 = time.time()
  recipe = list(config.recipe)
  results: list[stage_lib.StageResult] = []
  pending = [i for i, n in enumerate(recipe)
             if not (stage_dir(workdir, i, n) / "DONE.json").exists()]
  for i in range(pending[0] if pending else len(recipe)):  # finished stages: nothing to build
    results.append(stage_lib.StageResult(
        **json.loads((stage_dir(workdir, i, recipe[i]) / "DONE.json").read_text())))
    log.info("stage %d/%d %s: already done, skipping", i + 1, len(recipe), recipe[i])
  if pending:
    results += _train(config, workdir, recipe, pending[0])
  summary = {
      "workdir": str(workdir),
      "stages": [dataclasses.asdict(r) for r in results],
      "final_params": str(stage_dir(workdir, len(recipe) - 1, recipe[-1]) / "params"),
      "seconds": round(time.time() - t0, 2),
  }
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


def _train(config, workdir: pathlib.Path, recipe: list[str], first: int):
  """Stages first..end; stage `first` starts from the previous stage's params (or init)."""
  tok = build.tokenizer(config.model)
  model = build.model(config.model, tok)
  num_visual = build.num_visual_tokens(model, config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.rules_from_config(config.get("sharding_rules"))
  batch_sharding = mesh_lib.batch_sharding(mesh)
  results = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = build.abstract_params(model, config, num_visual, mesh, rules)
    if first == 0:
      params = build.init_params(model, config, num_visual, abstract, shardings)
    else:
      params = stage_lib.load_params(
          stage_dir(workdir, first - 1, recipe[first - 1]) / "params", abstract)
    for i in range(first, len(recipe)):
      name, scfg = recipe[i], config.stages[recipe[i]]
      sdir = stage_dir(workdir, i, name)
      if scfg.loss == "reconstruction" and not hasattr(model.reducer, "reconstruction_loss"):
        result = stage_lib.StageResult(name, "skipped", note=(
            f"reducer {config.model.reducer.name!r} has no reconstruction objective"))
        sdir.mkdir(parents=True, exist_ok=True)
        stage_lib.save_params(sdir / "params", params)
        (sdir / "DONE.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
        results.append(result)
        continue
      log.info("stage %d/%d %s: %d steps, training %s", i + 1, len(recipe), name, scfg.steps,
               ", ".join(scfg.trainable))
      ds = pipeline.dataset(config.data, scfg.task, tok, num_visual, scfg.batch_size,
                            seed=config.seed + i)
      put = lambda b: jax.device_put(b, batch_sharding)  # noqa: E731
      params, result = stage_lib.run_stage(
          name, i, len(recipe), scfg, model, params, lambda s: pipeline.iterate(ds, s), sdir,
          seed=config.seed + 1000 * (i + 1), put_batch=put)
      results.append(result)
      log.info("stage %s done: loss %.4f → %.4f in %.1f s", name, result.first_loss,
               result.final_loss, result.seconds)
  return results
