"""Train-step time of our decoder vs transformers' PyTorch model, same config, batch and machine.

One step = forward + backward + AdamW update, float32, random weights, params and optimiser state
donated to the step as the training loop does. Prints median seconds per step for each, their
ratio (ours / PyTorch; below 1 means we are faster), GFLOP/s counted as 6·N·tokens (N = all
parameters; the tied embedding is also the output layer) and that rate as a fraction of this
machine's float32 matmul rate, measured in the same run.

  python tools/bench_llm_train.py                       # SmolLM2-135M shape, batch 2 x 128
  python tools/bench_llm_train.py --family qwen2 --layers 4 --steps 3
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


from bench_transnetv2 import matmul_gflops
from longvid_jax.interop import llm_tables
from longvid_jax.interop import tables
from longvid_jax.models.llm import DecoderLM, LLMConfig


def smollm2_config(args) -> LLMConfig:
  return LLMConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                   num_layers=args.layers, num_heads=9, num_kv_heads=3, rope_theta=1e5,
                   rms_eps=1e-5, tie_embeddings=args.family == "llama",
                   qkv_bias=args.family == "qwen2", max_position=2048)


def time_steps(step, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


def bench_ours(cfg, params, ids, steps: int, lr: float) -> float:
  model = DecoderLM(cfg)
  tx = optax.adamw(lr, weight_decay=0.0)
  ids = jnp.asarray(ids)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  mask = jnp.ones_like(ids)

  def loss_fn(p):
    emb = model.apply({"params": p}, ids, method=DecoderLM.embed)
    logits = model.apply({"params": p}, emb, positions, mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, opt):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  state = [jax.tree.map(jnp.asarray, params), None]
  state[1] = tx.init(state[0])

  def step():
    p, opt, loss = train_step(*state)
    loss.block_until_ready()
    state[0], state[1] = p, opt

  t = time.perf_counter()
  step()  # compile
  print(f"  ours: compile + first step {time.perf_counter() - t:.1f} s")
  return statistics.median(time_steps(step, steps))


def bench_torch(cfg, params, ids, steps: int, lr: float, threads: int | None) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  hf_cfg = cfg.to_hf()
  cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[cfg.family]
  model_cls = {"llama": transformers.LlamaForCausalLM,
               "qwen2": transformers.Qwen2ForCausalLM}[cfg.family]
  model = model_cls(cls(**{k: v for k, v in hf_cfg.items()
                           if k not in ("architectures", "model_type")}))
  state = {k: torch.from_numpy(np.array(v, np.float32))
           for k, v in tables.to_theirs(params, llm_tables.HF_RULES, cfg).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  if unexpected or set(missing) - {"lm_head.weight"}:  # tied head shares the embedding
    raise RuntimeError(f"weights did not transfer: missing {missing}, unexpected {unexpected}")
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
  x = torch.tensor(np.asarray(ids, np.int64))

  def step():
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    opt.step()

  step()  # warm-up
  return statistics.median(time_steps(step, steps))


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--family", choices=["llama", "qwen2"], default="llama")
  ap.add_argument("--layers", type=int, default=30)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--torch-threads", type=int, default=None)
  args = ap.parse_args(argv)

  cfg = smollm2_config(args)
  model = DecoderLM(cfg)
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq)).astype(
      np.int32)
  init = lambda m, i: m(m.embed(i), jnp.zeros_like(i), jnp.ones_like(i))
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), jnp.asarray(ids[:, :8]),
                                               method=init))["params"])()
  params = jax.tree.map(np.asarray, params)
  n = sum(x.size for x in jax.tree.leaves(params))
  tokens = args.batch * args.seq
  flops = 6 * n * tokens
  print(f"{cfg.family} {args.layers} layers, {n / 1e6:.1f}M params, batch {args.batch}x{args.seq}, "
        f"devices {jax.devices()[0].platform}")
  peak = matmul_gflops()
  ours = bench_ours(cfg, params, ids, args.steps, 1e-4)
  theirs = bench_torch(cfg, params, ids, args.steps, 1e-4, args.torch_threads)
  print(f"  float32 matmul rate (2048², this run): {peak:.1f} GFLOP/s")
  for name, t in (("ours (jax)", ours), ("transformers (torch)", theirs)):
    print(f"  {name:22s} {t:7.3f} s/step  {flops / t / 1e9:7.1f} GFLOP/s (6N·tokens) "
          f"= {flops / t / 1e9 / peak:.0%} of the matmul rate")
  print(f"  ratio ours/torch: {ours / theirs:.2f} (below 1 = faster)")


if __name__ == "__main__":
  main()
