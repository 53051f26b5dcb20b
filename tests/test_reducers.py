"""Peer token reducers (pooling, bilinear, ToMe, Perceiver, FiLA, LongVU) against independent
references: NumPy loops, torch.nn.functional.interpolate, crafted inputs with known answers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from longvid_jax.models.reducers import REDUCERS
from longvid_jax.models.reducers.pooling import avgpool3d, bilinear2d
from longvid_jax.models.reducers.tome import merge_schedule, tome_merge

RNG = np.random.default_rng(0)


def _init(m, x, **kw):
  """Jitted init: op-by-op eager init compiles every primitive separately (slow on CPU)."""
  return jax.jit(lambda k, x: m.init(k, x, **kw))(jax.random.key(0), x)


def _apply(m, params, x, **kw):
  return jax.jit(lambda p, x: m.apply(p, x, **kw))(params, x)


def _np_avgpool3d(x: np.ndarray, strides) -> np.ndarray:
  """Reference: each window reads indices clamped to the last real frame/row/column."""
  b, t, h, w, c = x.shape
  st, sh, sw = strides
  grid = [-(-n // s) for n, s in zip((t, h, w), strides)]
  out = np.zeros((b, *grid, c), np.float64)
  for i in range(grid[0]):
    for j in range(grid[1]):
      for k in range(grid[2]):
        ti = np.minimum(np.arange(i * st, (i + 1) * st), t - 1)
        hi = np.minimum(np.arange(j * sh, (j + 1) * sh), h - 1)
        wi = np.minimum(np.arange(k * sw, (k + 1) * sw), w - 1)
        out[:, i, j, k] = x[:, ti][:, :, hi][:, :, :, wi].mean(axis=(1, 2, 3))
  return out


@pytest.mark.parametrize("shape,strides", [
    ((2, 4, 6, 6, 3), (2, 2, 3)),  # strides divide the grid
    ((1, 5, 27, 27, 2), (4, 4, 4)),  # SigLIP-384 grid: padded to 8×28×28 → 2×7×7
    ((1, 3, 5, 7, 2), (1, 2, 3)),
])
def test_avgpool3d_matches_numpy(shape, strides):
  x = RNG.standard_normal(shape).astype(np.float32)
  got = np.asarray(avgpool3d(jnp.asarray(x), strides))
  np.testing.assert_allclose(got, _np_avgpool3d(x, strides), rtol=1e-5, atol=1e-6)
  m = REDUCERS.get("avgpool3d")(strides=strides)
  out = _apply(m, {}, jnp.asarray(x))
  assert out.tokens.shape[1] == m.num_tokens(*shape[1:4]) == np.prod(got.shape[1:4])
  np.testing.assert_array_equal(np.asarray(out.tokens), got.reshape(shape[0], -1, shape[-1]))


@pytest.mark.parametrize("src,dst", [((27, 27), (14, 14)), ((5, 6), (9, 4))])
def test_bilinear_matches_torch_interpolate(src, dst):
  """jax.image.resize(bilinear, antialias=False) and torch's align_corners=False both sample at
  half-pixel centres; at borders torch clamps the source coordinate and JAX renormalises the
  in-bounds weights, which gives the same value for a linear kernel. Tolerance 1e-5 (fp32)."""
  torch = pytest.importorskip("torch")
  x = RNG.standard_normal((2, 3, *src, 4)).astype(np.float32)
  got = np.asarray(bilinear2d(jnp.asarray(x), dst))
  xt = torch.from_numpy(x).reshape(6, *src, 4).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(xt, size=dst, mode="bilinear", align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(2, 3, *dst, 4).numpy()
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bilinear_reducer_counts_and_newlines():
  x = jnp.asarray(RNG.standard_normal((1, 2, 27, 27, 4)).astype(np.float32))
  plain = REDUCERS.get("bilinear2d")()
  assert plain.num_tokens(1, 27, 27) == 196  # LLaVA-OneVision: 27×27 → 14×14
  base = np.asarray(_apply(plain, {}, x).tokens).reshape(1, 2, 14, 14, 4)
  row = REDUCERS.get("bilinear2d")(newline="row")
  params = _init(row, x)
  out = _apply(row, params, x)
  assert out.tokens.shape[1] == row.num_tokens(2, 27, 27) == 2 * 14 * 15
  grid = np.asarray(out.tokens).reshape(1, 2, 14, 15, 4)
  nl = np.asarray(nn.unbox(params)["params"]["newline_embedding"])
  np.testing.assert_array_equal(grid[..., :14, :], base)
  np.testing.assert_array_equal(grid[..., 14, :], np.broadcast_to(nl, (1, 2, 14, 4)))
  frame = REDUCERS.get("bilinear2d")(newline="frame")
  p2 = _init(frame, x)
  f = np.asarray(_apply(frame, p2, x).tokens).reshape(1, 2, 197, 4)
  np.testing.assert_array_equal(f[:, :, :196], base.reshape(1, 2, 196, 4))
  np.testing.assert_array_equal(f[:, :, 196], np.broadcast_to(
      np.asarray(nn.unbox(p2)["params"]["newline_embedding"]), (1, 2, 4)))


@pytest.mark.parametrize("t,k,exact", [(8, 4, True), (6, 4, True), (6, 3, False)])
def test_fila_weighted_fusion_starts_as_temporal_average(t, k, exact):
  x = jnp.asarray(RNG.standard_normal((2, t, 3, 3, 8)).astype(np.float32))
  weighted = REDUCERS.get("fila")(k=k, mode="weighted")
  got = np.asarray(_apply(weighted, _init(weighted, x), x).tokens)
  avg = np.asarray(_apply(REDUCERS.get("fila")(k=k, mode="average"), {}, x).tokens)
  ref = _np_avgpool3d(np.asarray(x), (k, 1, 1)).reshape(avg.shape)  # edge-padded last scene
  np.testing.assert_allclose(avg, ref, rtol=1e-6, atol=1e-6)
  if exact:  # 1/k is a power of two: the same sum, scaled exactly
    np.testing.assert_array_equal(got, avg)
  else:
    np.testing.assert_allclose(got, avg, rtol=1e-6, atol=1e-6)
  assert got.shape[1] == weighted.num_tokens(t, 3, 3)


def _with_cosine(anchor: np.ndarray, cos: float, scale: float) -> np.ndarray:
  """A vector whose cosine similarity to `anchor` is exactly `cos` (up to fp rounding)."""
  u = RNG.standard_normal(anchor.shape)
  a = anchor / np.linalg.norm(anchor)
  u -= (u @ a) * a
  u /= np.linalg.norm(u)
  return scale * (cos * a + np.sqrt(max(0.0, 1 - cos * cos)) * u)


def test_stc_keeps_first_frame_whole_and_drops_exactly_the_similar_tokens():
  t, h, w, c, chunk, thr = 8, 2, 2, 6, 4, 0.8
  cosines = np.array([1.0, 0.95, 0.81, 0.79, 0.5, 0.0, -0.9])
  x = np.zeros((1, t, h * w, c))
  keep = np.ones((t, h * w), bool)
  for f in range(t):
    if f % chunk == 0:
      # The second chunk's first frame copies the previous frame: it must still be kept whole.
      x[0, f] = x[0, f - 1] if f else RNG.standard_normal((h * w, c))
      continue
    for p in range(h * w):
      cos = cosines[(f * h * w + p) % len(cosines)]
      x[0, f, p] = _with_cosine(x[0, f - f % chunk, p], cos, RNG.uniform(0.5, 3))
      keep[f, p] = cos <= thr
  x = x.astype(np.float32)
  m = REDUCERS.get("longvu")(chunk=chunk, threshold=thr)
  out = _apply(m, {}, jnp.asarray(x.reshape(1, t, h, w, c)))
  n = keep.sum()
  assert out.tokens.shape[1] == m.num_tokens(t, h, w) == t * h * w
  np.testing.assert_array_equal(np.asarray(out.mask[0]), np.arange(t * h * w) < n)
  np.testing.assert_array_equal(np.asarray(out.tokens[0, :n]), x[0][keep])
  np.testing.assert_array_equal(np.asarray(out.tokens[0, n:]), 0)
  assert keep[::chunk].all() and not keep.all()


def _longvu_params_identity_query(m, x, query):
  params = nn.unbox(_init(m, x, query=query))
  c = x.shape[-1]
  params["params"]["query_proj"]["kernel"] = jnp.eye(query.shape[-1], c)
  return params


def test_longvu_query_keeps_the_relevant_frame_at_full_resolution():
  t, h, w, c = 4, 4, 4, 8
  x = RNG.standard_normal((1, t, h, w, c)).astype(np.float32)
  d = np.eye(c)[3]
  x[0, 0] += 4 * d  # frame 0 points along d; the question asks about d
  query = jnp.asarray(3 * d[None, None].astype(np.float32))
  budget = t * 4 + 12  # all frames at 2×2 plus one frame upgraded to 4×4 → N_h = 1
  m = REDUCERS.get("longvu")(budget=budget, threshold=1.0, low_res_stride=2)
  assert m.num_full_frames(t, h, w) == 1 and m.num_tokens(t, h, w) == budget
  params = _longvu_params_identity_query(m, jnp.asarray(x), query)

  def expected(full_frame):
    low = _np_avgpool3d(x, (1, 2, 2)).reshape(t, 4, c)
    return np.concatenate([x[0, f].reshape(-1, c) if f == full_frame else low[f]
                           for f in range(t)])

  out = _apply(m, params, jnp.asarray(x), query=query)
  assert bool(out.mask.all())
  np.testing.assert_allclose(np.asarray(out.tokens[0]), expected(0), rtol=1e-6, atol=1e-6)
  # Without a query the evenly spaced choice (frame ⌊0.5·T/N_h⌋ = 2) stays full instead.
  out = _apply(m, params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(out.tokens[0]), expected(2), rtol=1e-6, atol=1e-6)

  # Selection is discrete, yet the straight-through gate lets the LM loss train query_proj.
  def loss(p):
    return jnp.sum(m.apply(p, jnp.asarray(x), query=query).tokens ** 2)
  g = jax.jit(jax.grad(loss))(params)["params"]["query_proj"]["kernel"]
  assert float(jnp.abs(g).max()) > 0


def test_longvu_budget_edges():
  m = REDUCERS.get("longvu")(budget=10, low_res_stride=2)
  with pytest.raises(ValueError, match="budget"):
    m.num_tokens(4, 4, 4)  # 4 frames × 2×2 = 16 tokens even at low resolution
  x = jnp.asarray(RNG.standard_normal((1, 4, 4, 4, 8)).astype(np.float32))
  tight = REDUCERS.get("longvu")(budget=16 + 11, low_res_stride=2, threshold=1.0)
  assert tight.num_full_frames(4, 4, 4) == 0  # one short of upgrading a frame
  out = _apply(tight, {}, x)
  ref = _np_avgpool3d(np.asarray(x), (1, 2, 2)).reshape(16, 8)
  np.testing.assert_array_equal(np.asarray(out.mask[0]), np.arange(27) < 16)
  np.testing.assert_allclose(np.asarray(out.tokens[0, :16]), ref, rtol=1e-6, atol=1e-6)


def test_tome_merges_to_target_and_preserves_total_weight():
  x = jnp.asarray(RNG.standard_normal((2, 50, 8)).astype(np.float32))
  assert merge_schedule(50, 7) == [25, 12, 6]
  for target in (25, 7):  # one full-size step; several steps
    merged, size = tome_merge(x, target)
    assert merged.shape == (2, target, 8) and size.shape == (2, target)
    np.testing.assert_array_equal(np.asarray(size.sum(-1)), [50, 50])
    # Size-weighted means: Σ size·token equals the sum of the original tokens.
    np.testing.assert_allclose(np.asarray(jnp.sum(merged * size[..., None], axis=1)),
                               np.asarray(x.sum(1)), rtol=1e-4, atol=1e-4)


def test_tome_merges_duplicates_first():
  m = 6
  uniq = np.eye(8)[:m] * np.arange(1, m + 1)[:, None]  # orthogonal, so only twins match
  x = jnp.asarray(np.repeat(uniq, 2, axis=0)[None].astype(np.float32))  # A_i == B_i
  merged, size = tome_merge(x, m)
  np.testing.assert_allclose(np.asarray(merged[0]), uniq, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(size[0]), 2)


def test_perceiver_outputs_one_token_per_query():
  x = jnp.asarray(RNG.standard_normal((2, 4, 4, 4, 8)).astype(np.float32))
  direct = REDUCERS.get("perceiver")(num_queries=5, depth=1, num_heads=2)
  params = jax.eval_shape(lambda x: direct.init(jax.random.key(0), x), x)
  out = jax.eval_shape(direct.apply, params, x)  # shapes only: no compile needed
  assert out.tokens.shape == (2, 5, 8) == (2, direct.num_tokens(4, 4, 4), 8)
  ratio = REDUCERS.get("perceiver")(ratio=1 / 16, depth=1, num_heads=2)
  params = _init(ratio, x)
  out = _apply(ratio, params, x)
  assert out.tokens.shape == (2, 4, 8) == (2, ratio.num_tokens(4, 4, 4), 8)
  assert bool(out.mask.all()) and bool(jnp.isfinite(out.tokens).all())
  with pytest.raises(ValueError, match="num_queries"):
    ratio.apply(params, x[:, :2])  # another grid would need 2 latents


@pytest.mark.parametrize("name,args,match", [
    ("avgpool3d", {"strides": (2, 0, 2)}, "strides"),
    ("avgpool3d", {"strides": (2, 2)}, "strides"),
    ("bilinear2d", {"stride": 0}, "stride"),
    ("bilinear2d", {"newline": "col"}, "newline"),
    ("tome", {"target": -1}, "target"),
    ("tome", {"ratio": 0.0}, "ratio"),
    ("tome", {"over": "clip"}, "over"),
    ("perceiver", {"num_queries": -2}, "num_queries"),
    ("perceiver", {"depth": 0}, "depth"),
    ("fila", {"k": 0}, "k"),
    ("fila", {"mode": "max"}, "mode"),
    ("fila", {"tokens_per_scene": -1}, "tokens_per_scene"),
    ("longvu", {"budget": -1}, "budget"),
    ("longvu", {"chunk": 0}, "chunk"),
    ("longvu", {"low_res_stride": 0}, "low_res_stride"),
])
def test_bad_config_is_rejected_at_construction(name, args, match):
  with pytest.raises(ValueError, match=match):
    REDUCERS.get(name)(**args)


@pytest.mark.parametrize("name,args,match", [
    ("perceiver", {"num_heads": 3}, "num_heads"),
    ("fila", {"mode": "attention", "num_heads": 3}, "num_heads"),
    ("fila", {"mode": "bipartite", "tokens_per_scene": 1000}, "tokens_per_scene"),
    ("tome", {"target": 100}, "target"),
])
def test_bad_config_for_the_grid_is_rejected_at_first_call(name, args, match):
  x = jnp.zeros((1, 2, 3, 3, 8))
  with pytest.raises(ValueError, match=match):
    REDUCERS.get(name)(**args).init(jax.random.key(0), x)


SHARDED_CASES = [
    ("avgpool3d", {"strides": (2, 2, 2)}),
    ("bilinear2d", {"newline": "row"}),
    ("tome", {"target": 13}),  # one merge step each: multi-step schedules are tested above
    ("tome", {"over": "video", "ratio": 0.5}),
    ("perceiver", {"num_queries": 6, "depth": 1, "num_heads": 2}),
    ("fila", {"k": 2, "mode": "weighted"}),
    ("fila", {"k": 2, "mode": "attention", "num_heads": 2}),
    ("fila", {"k": 2, "mode": "bipartite", "tokens_per_scene": 25}),
    ("longvu", {"budget": 60, "chunk": 2, "threshold": 0.3}),
]


@pytest.mark.parametrize("name,args", SHARDED_CASES, ids=[
    f"{n}-{'-'.join(map(str, a.values()))}" for n, a in SHARDED_CASES])
def test_jit_and_batch_sharding_match_unsharded(name, args):
  b, t, h, w, c = 8, 4, 5, 5, 8
  x = jnp.asarray(RNG.standard_normal((b, t, h, w, c)).astype(np.float32))
  query = jnp.asarray(RNG.standard_normal((b, 3, 6)).astype(np.float32))
  m = REDUCERS.get(name)(**args)
  params = _init(m, x, query=query)
  fn = jax.jit(lambda p, x, q: m.apply(p, x, query=q))
  ref = fn(params, x, query)
  n = m.num_tokens(t, h, w)
  assert ref.tokens.shape == (b, n, c) and ref.mask.shape == (b, n) and ref.mask.dtype == bool

  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh), nn.logical_axis_rules([("act_batch", "data")]):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    qs = jax.device_put(query, NamedSharding(mesh, P("data")))
    got = jax.jit(lambda p, x, q: m.apply(p, x, query=q))(params, xs, qs)
    assert got.tokens.sharding.spec[0] == "data"
  np.testing.assert_allclose(np.asarray(got.tokens), np.asarray(ref.tokens), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(ref.mask))
