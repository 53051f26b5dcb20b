"""One real training step gives the same loss and params on any mesh; scan, remat, bf16 compute,
gradient accumulation and the attention backend change speed or memory, never the numbers."""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.models import build, llm
from longvid_jax.parallel import distributed
from longvid_jax.parallel import mesh as mesh_lib
from longvid_jax.train import optim, stage

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")
GLOBAL_BATCH = 8
TRAINED = ("reducer", "projector", "llm")


def tiny_config():
  c = config_lib.load(RECIPE)
  c.model.llm.args = dict(c.model.llm.args, vocab_size=512)  # the vocab is most of the step
  c.data.seq_len = 48
  s = c.stages.joint
  s.update(trainable=TRAINED, lr=1e-3, steps=10)
  return c


def tiny_model(config):
  m = build.model(config.model, video_token_id=config.model.llm.args["vocab_size"])
  return m, build.num_visual_tokens(m, config)


def tiny_batch(config, num_visual: int, video_token_id: int, seed: int = 0) -> dict:
  """A global LM batch: the video placeholders, then text; the loss covers the text."""
  rng = np.random.default_rng(seed)
  d, b = config.data, GLOBAL_BATCH
  ids = rng.integers(1, video_token_id, (b, d.seq_len)).astype(np.int32)
  ids[:, :num_visual] = video_token_id
  loss_mask = np.zeros((b, d.seq_len), np.int32)
  loss_mask[:, num_visual + 2:] = 1
  attention_mask = np.ones((b, d.seq_len), np.int32)
  attention_mask[1, -5:] = 0  # a padded row
  loss_mask[1, -5:] = 0
  frames = rng.uniform(size=(b, d.num_frames, d.image_size, d.image_size, 3)).astype(np.float32)
  return dict(input_ids=ids, attention_mask=attention_mask, loss_mask=loss_mask, frames=frames)


def train_steps(config, sizes: dict, batches, devices=None):
  """Params and losses after one train step per global batch on the mesh `sizes`; each process
  feeds only its rows of every batch."""
  s = runs.setup(config, mesh=mesh_lib.make_mesh(sizes, devices), with_tokenizer=False)
  model, mesh, shardings = s.model, s.mesh, s.shardings
  scfg = config.stages.joint
  with s.scope():
    params = s.init_params()
    tx = optim.make_optimizer(scfg, params)
    state = stage.train_state(params, optim.init_opt_state(tx, params))
    step_fn = stage.make_train_step(model, "lm", tx, optim.trainable_mask(params, TRAINED))
    losses = []
    rows = distributed.process_rows(mesh_lib.batch_sharding(mesh), GLOBAL_BATCH)
    for i, batch in enumerate(batches):
      local = {k: v[rows] for k, v in batch.items()}
      put = distributed.put_batch(local, mesh_lib.batch_sharding(mesh))
      state, metrics = step_fn(state, put, jax.random.key(i))
      losses.append(metrics["loss"])
  return state["params"], losses, shardings


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model, num_visual = tiny_model(config)
  batch = tiny_batch(config, num_visual, model.video_token_id)
  params, losses, _ = train_steps(config, dict(data=1), [batch], devices=jax.devices()[:1])
  return config, batch, jax.device_get(params), float(losses[0])


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
  got, want = traverse_util.flatten_dict(got, sep="/"), traverse_util.flatten_dict(want, sep="/")
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k], np.float32), np.asarray(want[k], np.float32),
                               rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.slow
# pure data parallelism, and every axis split at once (fsdp and tensor cut the weights)
@pytest.mark.parametrize("data,fsdp,tensor", [(8, 1, 1), (2, 2, 2)])
def test_train_step_is_the_same_on_every_mesh(setup, data, fsdp, tensor):
  config, batch, want_params, want_loss = setup
  params, losses, shardings = train_steps(config, dict(data=data, fsdp=fsdp, tensor=tensor),
                                          [batch])
  np.testing.assert_allclose(float(losses[0]), want_loss, rtol=1e-5)
  assert_trees_close(jax.device_get(params), want_params)
  # the split is real: weights are cut over fsdp and tensor, not replicated
  gate = shardings["llm"]["layers_0"]["mlp"]["gate_proj"]["kernel"]
  assert gate.spec == P("fsdp", "tensor")
  q = params["llm"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert q.addressable_shards[0].data.shape == (q.shape[0] // fsdp, q.shape[1] // tensor)


def _lm(**kw):
  cfg = llm.LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                      num_heads=4, num_kv_heads=2, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 7, 32))
  pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
  mask = jnp.ones((2, 7), jnp.int32).at[1, 5:].set(0)
  params = nn.unbox(llm.DecoderLM(cfg).init(jax.random.key(1), x, pos, mask))["params"]
  return cfg, params, (x, pos, mask)


def _loss_and_grads(cfg, params, inputs):
  return jax.value_and_grad(lambda p: llm.DecoderLM(cfg).apply({"params": p}, *inputs).sum())(
      params)


@pytest.mark.parametrize("kw", [dict(scan_layers=True), dict(remat_policy="full"),
                                dict(scan_layers=True, remat_policy="dots_saveable")])
def test_scan_and_remat_change_no_numbers(kw):
  cfg, params, inputs = _lm()
  loss, grads = _loss_and_grads(cfg, params, inputs)
  cfg2 = dataclasses.replace(cfg, **kw)
  loss2, grads2 = _loss_and_grads(cfg2, llm.to_layout(params, cfg2), inputs)
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  assert_trees_close(llm.unstack_layers(grads2), grads, atol=1e-5)


def test_scanned_params_are_stacked_with_a_replicated_layer_axis():
  cfg, params, inputs = _lm(scan_layers=True)
  assert params["layers"]["mlp"]["gate_proj"]["kernel"].shape == (3, 32, 64)
  boxed = jax.eval_shape(lambda: llm.DecoderLM(cfg).init(jax.random.key(1), *inputs))
  spec = nn.get_partition_spec(boxed)["params"]["layers"]["mlp"]["gate_proj"]["kernel"]
  assert spec == P("layers", "embed", "mlp")
  flat = llm.unstack_layers(params)
  assert "layers_2" in flat and "layers" not in flat
  assert_trees_close(llm.stack_layers(flat), params, rtol=0, atol=0)
  with pytest.raises(ValueError, match="remat_policy"):
    llm.LLMConfig(remat_policy="dots_savable")


def test_bf16_compute_keeps_fp32_master_weights():
  cfg, params, inputs = _lm(dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits = llm.DecoderLM(cfg).apply({"params": params}, *inputs)
  ref = llm.DecoderLM(dataclasses.replace(cfg, dtype="float32")).apply({"params": params}, *inputs)
  np.testing.assert_allclose(logits, ref, atol=0.1)
  _, grads = _loss_and_grads(cfg, params, inputs)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def _reference_attention(p, cfg, x, positions, mask):
  """Softmax attention written out: GQA by repeating kv heads, causal and padding mask."""
  b, t, _ = x.shape
  hd, n, nkv = cfg.dim_per_head, cfg.num_heads, cfg.num_kv_heads
  proj = lambda name: x @ p[name]["kernel"] + p[name].get("bias", 0)  # noqa: E731
  q = llm.rope(proj("q_proj").reshape(b, t, n, hd), positions, cfg.rope_theta)
  k = llm.rope(proj("k_proj").reshape(b, t, nkv, hd), positions, cfg.rope_theta)
  v = proj("v_proj").reshape(b, t, nkv, hd)
  k, v = jnp.repeat(k, n // nkv, axis=2), jnp.repeat(v, n // nkv, axis=2)
  s = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(hd)
  s = jnp.where(mask[:, None], s, -1e30)
  out = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(s, axis=-1), v).reshape(b, t, n * hd)
  return out @ p["o_proj"]["kernel"]


@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_attention_backend_matches_written_out_attention(impl):
  cfg, _, (x, pos, m) = _lm(attention_impl=impl, qkv_bias=True)
  t = x.shape[1]
  mask = jnp.tril(jnp.ones((t, t), bool))[None] & m.astype(bool)[:, None, :]
  attn = llm.Attention(cfg)
  p = attn.init(jax.random.key(2), x, pos, mask)["params"]
  p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(3), a.shape), nn.unbox(p))
  got = attn.apply({"params": p}, x, pos, mask)
  np.testing.assert_allclose(got, _reference_attention(p, cfg, x, pos, mask), atol=1e-5)
  assert llm.attention_impl(cfg, x, decoding=False) == "xla"  # on CPU


def test_grad_accum_averages_k_batches_into_one_update():
  params = {"llm": {"w": jnp.arange(6.0).reshape(2, 3)}, "projector": {"w": jnp.ones(3)}}
  grads = [jax.tree.map(lambda x, i=i: jnp.cos(x + i), params) for i in range(4)]
  cfg = config_lib.stage(trainable=("llm",), lr=0.1, warmup_steps=2, steps=8, grad_accum=2)
  tx = optim.make_optimizer(cfg, params)
  ref_cfg = config_lib.stage(trainable=("llm",), lr=0.1, warmup_steps=1, steps=4)
  ref_tx = optim.make_optimizer(ref_cfg, params)
  p, state = params, tx.init(params)
  q, ref_state = params, ref_tx.init(params)
  for i, g in enumerate(grads):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    if i % 2:
      mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[i - 1], g)
      u, ref_state = ref_tx.update(mean, ref_state, q)
      q = optax.apply_updates(q, u)
      assert_trees_close(p, q)
    else:
      assert_trees_close(p, q, rtol=0, atol=0)  # nothing moves between updates
  assert not np.allclose(p["llm"]["w"], params["llm"]["w"])
  np.testing.assert_array_equal(p["projector"]["w"], params["projector"]["w"])


@pytest.mark.parametrize("k", [1, 2])
def test_optimizer_state_is_sharded_like_the_params(k):
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=8))
  row = jax.sharding.NamedSharding(mesh, P("fsdp"))
  params = {"llm": {"w": jax.device_put(jnp.ones((16, 4)), row)},
            "projector": {"w": jax.device_put(jnp.ones(8), row)}}
  tx = optim.make_optimizer(config_lib.stage(trainable=("llm",), grad_accum=k), params)
  state = optim.init_opt_state(tx, params)
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    want = P("fsdp") if x.ndim else P()
    assert x.sharding.spec == want, jax.tree_util.keystr(path)
