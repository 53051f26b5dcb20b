"""Training throughput of a recipe's train step: tokens/s and model FLOPs utilisation (MFU).

  python tools/bench_mfu.py --reduced                  # toy sizes, any machine (CPU included)
  python tools/bench_mfu.py --mesh 8:1,8,1 --steps 10  # paper recipe on 8 accelerators
  python tools/bench_mfu.py --reduced --peak_tflops 2  # MFU against a peak you give

Model FLOPs per step are the LLM's training FLOPs, 6·N·tokens plus attention's 12·layers·heads·
head_dim·seq² per sequence (N = LLM params); MFU divides their rate by the devices' peak. The
frozen vision encoder and the reducer are not counted, so MFU is a lower bound of the useful work;
`XLA TFLOP/s` is the compiled program's own count (everything, remat included; per step only
when layers are not scanned, since XLA counts a loop body once). Peak dense bf16 FLOPs come from
the table below by device kind, or from --peak_tflops.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aot_plan  # noqa: E402  pylint: disable=g-import-not-at-top

# dense bf16 peak TFLOP/s per device (vendor figures, no sparsity)
PEAK_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
}
CPU_ASSUMED_TFLOPS = 1.0  # a stand-in so CPU runs print a number; pass --peak_tflops to be exact


def peak_tflops(kind: str, platform: str) -> tuple[float, str]:
  for name, tf in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tf, f"{name} table"
  if platform == "cpu":
    return CPU_ASSUMED_TFLOPS, "assumed for CPU"
  raise ValueError(f"no peak FLOPs known for device kind {kind!r}; pass --peak_tflops")


def model_flops(llm_cfg, n_llm: int, batch: int, seq: int) -> float:
  attn = 12.0 * llm_cfg.num_layers * llm_cfg.num_heads * llm_cfg.dim_per_head * seq * seq
  return 6.0 * n_llm * batch * seq + attn * batch


def main(argv=None) -> dict:
  p = aot_plan.argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
  p.add_argument("--peak_tflops", type=float, default=None, help="per-device peak, TFLOP/s")
  known, rest = p.parse_known_args(argv)
  args = aot_plan.parse_args(rest)
  if args.mesh is None:
    args.mesh = ["1:1,1,1"]
  (n, sizes), = aot_plan.mesh_specs(args)[:1]
  if "jax" not in sys.modules and n > 1:  # fake CPU devices; no effect on accelerators
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}").strip()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from longvid_jax import runs  # pylint: disable=g-import-not-at-top
  from longvid_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from longvid_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import optim, stage  # pylint: disable=g-import-not-at-top

  config = aot_plan.load_config(args)
  s = runs.setup(config, mesh=sizes, with_tokenizer=False)  # no tokenizer download
  model, mesh, num_visual, abstract = s.model, s.mesh, s.num_visual, s.abstract
  llm_cfg = model.llm.cfg
  vocab = llm_cfg.vocab_size
  scfg, d = config.stages[args.stage], config.data
  batch_size = args.per_device_batch * sizes["data"] * sizes["fsdp"]
  rng = np.random.default_rng(0)
  ids = rng.integers(1, vocab, (batch_size, d.seq_len)).astype(np.int32)
  ids[:, :num_visual] = vocab
  batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids),
               frames=rng.uniform(size=(batch_size, d.num_frames, d.image_size, d.image_size, 3)
                                  ).astype(np.float32))
  with s.scope():
    params = s.init_params()
    tx = optim.make_optimizer(scfg, params)
    state = stage.train_state(params, optim.init_opt_state(tx, params))
    trainable = optim.trainable_mask(params, scfg.trainable)
    step = stage.make_train_step(model, scfg.loss, tx, trainable)
    batch = distributed.put_batch(batch, mesh_lib.batch_sharding(mesh))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch, jax.random.key(0))
    jax.block_until_ready(m)
    times = []
    for i in range(known.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, batch, jax.random.key(i + 1))
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float((cost or {}).get("flops", 0.0)) * n  # the count is per device
  n_llm = sum(x.size for x in jax.tree.leaves(abstract["llm"]))
  dev = jax.devices()[0]
  peak, source = ((known.peak_tflops, "given") if known.peak_tflops
                  else peak_tflops(dev.device_kind, dev.platform))
  sec = statistics.median(times)
  tokens = batch_size * d.seq_len
  flops = model_flops(llm_cfg, n_llm, batch_size, d.seq_len)
  r = dict(device=f"{n} x {dev.device_kind}", mesh=sizes, batch=batch_size, seq=d.seq_len,
           llm_params=n_llm, compile_s=compile_s, step_s=sec, tokens_per_s=tokens / sec,
           model_tflops_per_s=flops / sec / 1e12, xla_tflops_per_s=xla_flops / sec / 1e12,
           peak_tflops=peak * n, mfu=flops / sec / (peak * 1e12 * n),
           loss=float(m["loss"]))
  print(f"device      {r['device']} (peak {peak:g} TFLOP/s each, {source})")
  print(f"model       LLM {n_llm / 1e6:.1f} M params, batch {batch_size} x {d.seq_len} tokens, "
        f"mesh {sizes}, scan={bool(args.scan)}, remat={args.remat}, dtype={llm_cfg.dtype}")
  print(f"compile     {compile_s:.1f} s")
  print(f"step        {sec * 1e3:.1f} ms (median of {known.steps})")
  print(f"tokens/s    {r['tokens_per_s']:.1f}")
  print(f"model FLOPs {r['model_tflops_per_s']:.4f} TFLOP/s  (XLA count "
        f"{r['xla_tflops_per_s']:.4f} TFLOP/s)")
  print(f"MFU         {100 * r['mfu']:.2f} %")
  return r


if __name__ == "__main__":
  main()
