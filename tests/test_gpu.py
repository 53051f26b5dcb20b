"""Checks that need an accelerator, run by tools/gpu_check.sh; skipped where JAX has no GPU.

Tolerances: cuDNN flash attention against XLA's attention on the same bf16 inputs within 2e-2
max abs (bf16 carries ~3 significant digits; both accumulate in fp32).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.models import llm
from longvid_jax.train import runner

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")

needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


@needs_gpu
def test_cudnn_flash_attention_matches_xla_in_bfloat16():
  cfg = llm.LLMConfig(vocab_size=64, hidden_size=512, intermediate_size=64, num_layers=1,
                      num_heads=8, num_kv_heads=2, dtype="bfloat16")
  b, t = 2, 256
  x = jax.random.normal(jax.random.key(0), (b, t, cfg.hidden_size), jnp.bfloat16)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  mask = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)
  params = llm.Attention(cfg).init(jax.random.key(1), x, pos, mask)["params"]
  out = {}
  for impl in ("xla", "cudnn"):
    c = llm.LLMConfig(**{**cfg.__dict__, "attention_impl": impl})
    out[impl] = np.asarray(llm.Attention(c).apply({"params": params}, x, pos, mask), np.float32)
  assert llm.attention_impl(llm.LLMConfig(**{**cfg.__dict__, "attention_impl": "auto"}), x,
                            decoding=False) == "cudnn"
  assert np.abs(out["cudnn"] - out["xla"]).max() < 2e-2


@needs_gpu
def test_sharded_init_on_the_gpus():
  c = config_lib.load(RECIPE)
  n = jax.device_count()
  s = runs.setup(c, mesh=dict(data=1, fsdp=n, tensor=1))
  with s.scope():
    params = s.init_params()
  leaves = jax.tree.leaves(params)
  assert all(x.devices() <= set(jax.devices()) for x in leaves)
  assert all(bool(jnp.isfinite(x).all()) for x in leaves)


@needs_gpu
def test_one_train_step_of_each_stage(tmp_path):
  c = config_lib.load(RECIPE)
  for s in c.stages.values():
    s.update(steps=1, checkpoint_every=1, log_every=1)
  summary = runner.run(c, tmp_path)
  assert [s["status"] for s in summary["stages"]] == ["done"] * 4
  assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])


def _bench_args() -> list[str]:
  """The bench_mfu.py arguments tools/gpu_check.sh passes (its last command)."""
  import shlex
  text = (pathlib.Path(__file__).parents[1] / "tools" / "gpu_check.sh").read_text()
  cmd = text[text.rindex("tools/bench_mfu.py") + len("tools/bench_mfu.py"):]
  return shlex.split(cmd.replace("\\\n", " "))


def test_check_script_skips_without_a_gpu_and_benchmarks_a_1b_llm():
  import subprocess
  import aot_plan
  if jax.default_backend() != "gpu":
    out = subprocess.run(["bash", str(pathlib.Path(__file__).parents[1] / "tools" /
                                      "gpu_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0 and "no GPU" in out.stdout, out.stdout + out.stderr
  args = aot_plan.parse_args([a for a in _bench_args() if a not in ("--steps", "5")])
  c = aot_plan.load_config(args)
  config_lib.validate(c)
  s = runs.setup(c, mesh=dict(data=1, fsdp=1, tensor=1), with_tokenizer=False)  # shapes only
  n = sum(x.size for x in jax.tree.leaves(s.abstract["llm"]))
  assert 1.0e9 < n < 1.3e9, n
