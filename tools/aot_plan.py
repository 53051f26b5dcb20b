"""Plan a sharded training run before renting the machines: compile the real train step for a
mesh on fake CPU devices, with abstract params (nothing is allocated), and print per-device memory
and FLOPs for each mesh.

  python tools/aot_plan.py                                   # paper recipe, 8/64/256 devices
  python tools/aot_plan.py --mesh 8:1,8,1 --mesh 64:1,16,4   # DEVICES:data,fsdp,tensor
  python tools/aot_plan.py --reduced                         # small sizes, seconds (CI)

Memory comes from XLA's buffer assignment of the per-device program (CPU backend: a close but not
exact stand-in for TPU/GPU layouts). `args` holds the train state and batch shard, `temp` the
activations and gradients; `peak` = args + output + temp − aliased (donated state is reused).
FLOPs: XLA's count per device for one step, and 6·N·tokens per device for comparison (XLA counts
a scanned loop body once, so with --scan its number covers one layer of the LLM).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_MESHES = ("8:1,8,1", "8:1,4,2", "64:1,16,4", "256:4,16,4")
REDUCED_MESHES = ("8:8,1,1", "8:2,2,2", "8:1,4,2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=os.path.join(ROOT, "experiments", "paper.py"))
  p.add_argument("--mesh", action="append", help="DEVICES:data,fsdp,tensor (repeatable)")
  p.add_argument("--stage", default="joint", help="whose loss and trainable groups to compile")
  p.add_argument("--per_device_batch", type=int, default=1,
                 help="rows per data-parallel shard; global batch = this × data × fsdp")
  p.add_argument("--scan", type=int, default=1, help="scan the LLM layers (much faster compile)")
  p.add_argument("--remat", default="full", help="LLM remat_policy (none, full, dots_saveable...)")
  p.add_argument("--reduced", action="store_true", help="small model and inputs (seconds)")
  p.add_argument("--set", action="append", default=[], help="config override key.path=value")
  return p.parse_args(argv)


def mesh_specs(args) -> list[tuple[int, dict]]:
  out = []
  for spec in args.mesh or (REDUCED_MESHES if args.reduced else DEFAULT_MESHES):
    n, _, sizes = spec.partition(":")
    d, f, t = (int(x) for x in sizes.split(","))
    if d * f * t != int(n):
      raise ValueError(f"mesh {spec}: data·fsdp·tensor = {d * f * t}, not {n}")
    out.append((int(n), dict(data=d, fsdp=f, tensor=t)))
  return out


def reduce(c) -> None:
  """The same architecture at toy size, so the whole plan compiles in seconds."""
  c.model.encoder.preset = "tiny"
  c.model.encoder.args = dict(num_layers=1)
  c.model.reducer.args.bottleneck = 32
  c.model.llm.args = dict(c.model.llm.args, vocab_size=1024, hidden_size=64,
                          intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
  c.data.update(num_frames=8, image_size=64, seq_len=128)


def load_config(args):
  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load(args.config)
  for group in ("encoder", "reducer", "projector", "llm"):  # a plan needs shapes, not weights
    c.model[group].weights = None
  c.model.init_from = None
  if args.reduced:
    reduce(c)
  c.model.llm.args = dict(c.model.llm.args, scan_layers=bool(args.scan), remat_policy=args.remat)
  config_lib.override(c, args.set)
  return c


def plan(config, stage_name: str, sizes: dict, per_device_batch: int) -> dict:
  """Compile one train step for mesh `sizes` from abstract values; its memory and FLOPs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

  from longvid_jax import runs  # pylint: disable=g-import-not-at-top
  from longvid_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import optim, stage  # pylint: disable=g-import-not-at-top

  s = runs.setup(config, mesh=sizes, with_tokenizer=False)  # no tokenizer download
  model, mesh, abstract = s.model, s.mesh, s.abstract
  scfg = config.stages[stage_name]
  d = config.data
  batch_size = per_device_batch * sizes["data"] * sizes["fsdp"]
  with s.scope():
    tx = optim.make_optimizer(scfg, abstract)
    opt_shardings = optim.opt_state_shardings(tx, abstract)
    opt_abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                jax.eval_shape(tx.init, abstract), opt_shardings)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    state = stage.train_state(abstract, opt_abstract, scalar, scalar)
    rows = mesh_lib.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((batch_size, d.seq_len), jnp.int32, sharding=rows)
             for k in ("input_ids", "attention_mask", "loss_mask")}
    batch["frames"] = jax.ShapeDtypeStruct(
        (batch_size, d.num_frames, d.image_size, d.image_size, 3), jnp.float32, sharding=rows)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    trainable = optim.trainable_mask(abstract, scfg.trainable)
    step = stage.make_train_step(model, scfg.loss, tx, trainable)
    t0 = time.time()
    compiled = step.lower(state, batch, rng).compile()
    seconds = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  leaves = jax.tree.leaves(abstract)
  n_params = sum(a.size for a in leaves)
  n_llm = sum(a.size for a in jax.tree.leaves(abstract["llm"]))
  devices = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  return dict(
      devices=devices, mesh=f"{sizes['data']},{sizes['fsdp']},{sizes['tensor']}",
      batch=batch_size, tokens=batch_size * d.seq_len, params=n_params, llm_params=n_llm,
      args=mem.argument_size_in_bytes, out=mem.output_size_in_bytes,
      temp=mem.temp_size_in_bytes, alias=mem.alias_size_in_bytes, peak=peak,
      xla_flops=float((cost or {}).get("flops", 0.0)),
      model_flops=6.0 * n_llm * batch_size * d.seq_len / devices, compile_s=seconds)


def table_head(unit: str) -> str:
  head = ("devices", "data,fsdp,tensor", "batch", *(f"{k} {unit}" for k in
          ("args", "out", "temp", "peak")), "XLA TFLOP/dev", "6NT TFLOP/dev", "compile s")
  return "| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|"


def table_row(r: dict, scale: float) -> str:
  size = lambda x: f"{x / scale:.2f}"  # noqa: E731
  cells = (r["devices"], r["mesh"], r["batch"], size(r["args"]), size(r["out"]),
           size(r["temp"]), size(r["peak"]), f"{r['xla_flops'] / 1e12:.3f}",
           f"{r['model_flops'] / 1e12:.3f}", f"{r['compile_s']:.0f}")
  return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  meshes = mesh_specs(args)
  if "jax" not in sys.modules:  # the fake device count only takes effect before jax starts
    flags = os.environ.get("XLA_FLAGS", "")
    n = max(n for n, _ in meshes)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  config = load_config(args)
  unit, scale = ("MiB", 2**20) if args.reduced else ("GiB", 2**30)
  rows = []
  for n, sizes in meshes:
    if jax.device_count() < n:
      print(f"skipping {n} devices: only {jax.device_count()} exist (start a fresh process)")
      continue
    rows.append(plan(config, args.stage, sizes, args.per_device_batch))
    print(f"params {rows[-1]['params'] / 1e9:.2f} B (LLM {rows[-1]['llm_params'] / 1e9:.2f} B); "
          f"{table_row(rows[-1], scale)}", flush=True)  # each mesh as soon as it compiles
  print(table_head(unit))
  for r in rows:
    print(table_row(r, scale))
  return rows


if __name__ == "__main__":
  main()
