"""Where a training step's time goes, per stage of a recipe: tokens/s, and the share of the step
spent outside the language model (encoder, reducer, projector), with frames decoded and encoded
every step and with the feature cache (`data.features`: encoder outputs read from disk), beside
the input pipeline's seconds per batch.

For each stage with a text loss it times, on one real batch of that stage's data:
  step      the stage's own train step, on frames and on the frames' encoder features (what the
            feature cache feeds it);
  visual    the part before the LLM on its own: (encoder forward,) reducer and projector forward
            and backward to the groups the stage trains, on the same inputs;
and reports non-LLM share = visual / step, measured directly rather than as a difference of two
step times. The data time is one batch built on one thread from frames, and from the feature
cache when the recipe has one (training prefetches on `data.read_threads` threads while the step
runs, so it overlaps).

  python tools/bench_stages.py                 # the demo recipe (configs/demo.py)
  python tools/bench_stages.py CONFIG --steps 5
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.data import pipeline
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.train import losses, optim, runner, stage

ROOT = pathlib.Path(__file__).resolve().parents[1]


def median_seconds(fn, steps: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def visual_step(model: VideoLLM, trainable, on_frames: bool):
  """Forward and backward through everything before the LLM (a random cotangent stands in for
  the LLM's gradient), for the groups the stage trains."""
  def loss_fn(p, x):
    def f(m):
      feats = m.features(x) if on_frames else x
      e = m.visual_embeds(feats)[0].astype(jnp.float32)
      return jnp.sum(e * jax.random.normal(jax.random.key(0), e.shape))
    return nn.apply(f, model)({"params": p})

  @jax.jit
  def step(p, x):
    loss, grads = jax.value_and_grad(loss_fn)(p, x)
    trained = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    return loss, optax.global_norm(trained)
  return step


def read_batches(data, s: runs.Setup, scfg, seed: int, fingerprint: str | None,
                 n: int = 3) -> tuple[dict, float]:
  """The first of n batches built on one thread, and the seconds per batch."""
  ds = pipeline.dataset(data, scfg.task, s.tokenizer, s.num_visual, scfg.batch_size, seed=seed,
                        encoder_fingerprint=fingerprint)
  t = time.perf_counter()
  batches = [ds[i] for i in range(n)]
  seconds = (time.perf_counter() - t) / n
  return {k: v for k, v in batches[0].items() if k != pipeline.RECORD_ID}, seconds


def bench_stage(s: runs.Setup, config, name: str, index: int, params, steps: int) -> dict | None:
  scfg = config.stages[name]
  if not losses.LOSSES.get(scfg.loss).needs_text:
    return None
  scfg = runner.with_untrained_reducer(scfg, s.model, params)
  data = config_lib.stage_data(config, scfg, name)
  on_frames = copy.deepcopy(data)
  on_frames.features = None  # the frames path decodes, whatever the recipe's cache says
  batch, data_s = read_batches(on_frames, s, scfg, config.seed + index, None)
  # a recipe with a cache (run `longvid precompute` first) also times reading it
  data_cache_s = (read_batches(data, s, scfg, config.seed + index,
                               s.encoder_fingerprint(params))[1] if data.features else None)
  b, seq = batch["input_ids"].shape

  tx = optim.make_optimizer(scfg, params)
  trainable = optim.trainable_mask(params, scfg.trainable)
  step_fn = stage.make_train_step(s.model, scfg.loss, tx, trainable)
  rng = jax.random.key(0)
  with s.scope():
    feats = jax.jit(lambda p, f: s.model.apply({"params": p}, f, method=VideoLLM.features))(
        params, jnp.asarray(batch["frames"]))
  with_feats = {**{k: v for k, v in batch.items() if k != "frames"}, "features": feats}
  out = {"stage": name, "batch": b, "seq_len": seq, "data_s": data_s,
         "data_cache_s": data_cache_s}
  for kind, bt in (("frames", batch), ("features", with_feats)):
    state = stage.train_state(params, optim.init_opt_state(tx, params))
    state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)  # the step donates it
    box = [state]

    def one(bt=bt, box=box):
      with s.scope():
        box[0], metrics = step_fn(box[0], bt, rng)
      return metrics["loss"]
    out[kind] = median_seconds(one, steps)

  for kind, x in (("frames", jnp.asarray(batch["frames"])), ("features", feats)):
    fn = visual_step(s.model, trainable, kind == "frames")

    def vis_one(fn=fn, x=x):
      with s.scope():
        return fn(params, x)[1]
    out[f"visual_{kind}"] = median_seconds(vis_one, steps)
  return out


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "demo.py"))
  ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
  ap.add_argument("--set", action="append", metavar="KEY=VALUE", default=[])
  args = ap.parse_args(argv)
  config = config_lib.load(args.config)
  config_lib.override(config, args.set)
  config_lib.validate(config)
  s = runs.setup(config)
  params = s.init_params()
  rows = []
  for i, name in enumerate(config.recipe):
    r = bench_stage(s, config, name, i, params, args.steps)
    if r is None:
      print(f"{name}: no language-model loss; skipped")
      continue
    rows.append(r)
  print(f"\n{jax.devices()[0].device_kind}, {len(jax.devices())} device(s); median of "
        f"{args.steps} steps after a compile\n")
  print("| stage | batch × seq | step, frames | step, feature cache | tokens/s, frames | "
        "tokens/s, cache | non-LLM share, frames | non-LLM share, cache | data s/batch, frames | "
        "data s/batch, cache |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    tokens = r["batch"] * r["seq_len"]
    print(f"| {r['stage']} | {r['batch']} × {r['seq_len']} | {r['frames']:.3f} s | "
          f"{r['features']:.3f} s | {tokens / r['frames']:.0f} | {tokens / r['features']:.0f} | "
          f"{r['visual_frames'] / r['frames']:.1%} | {r['visual_features'] / r['features']:.1%} |"
          f" {r['data_s']:.3f} | "
          + ("—" if r["data_cache_s"] is None else f"{r['data_cache_s']:.4f}") + " |")
  return rows


if __name__ == "__main__":
  main()
