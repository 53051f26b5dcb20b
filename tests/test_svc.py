"""SVC compressor: shapes for every ratio, the residual constraint, gradients, and learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvid_jax.models.reducers import REDUCERS
from longvid_jax.models.reducers.pooling import avgpool3d
from longvid_jax.models.reducers.svc import SVC, block_strides

RATIOS = [(2, 2, 2), (4, 4, 4), (1, 8, 8), (4, 8, 8), (8, 4, 4)]


def _flax_init(svc, x):
  return svc.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, x)


def _init(svc, x):
  """Variables shaped as `svc.init` makes them (its checks run too), drawn with NumPy and scaled
  by fan-in: compiling flax's random init, a threefry program per 5-d conv kernel, would be most
  of this file's time on CPU. Learning on real video starts from the real init."""
  rng = np.random.default_rng(0)

  def draw(s):
    fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(fan_in), s.dtype)

  return jax.tree.map(draw, jax.eval_shape(lambda: _flax_init(svc, x)))


def _numpy_avgpool(x, s):
  """Independent reference: edge-pad with NumPy, then mean over each non-overlapping block."""
  pad = [(0, 0)] + [(0, -n % k) for n, k in zip(x.shape[1:4], s)] + [(0, 0)]
  x = np.pad(x, pad, mode="edge")
  b, t, h, w, c = x.shape
  out = np.zeros((b, t // s[0], h // s[1], w // s[2], c), np.float64)
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      for k in range(out.shape[3]):
        out[:, i, j, k] = x[:, i * s[0]:(i + 1) * s[0], j * s[1]:(j + 1) * s[1],
                            k * s[2]:(k + 1) * s[2]].mean(axis=(1, 2, 3))
  return out


@pytest.mark.parametrize("strides", RATIOS)
def test_shapes_and_token_counts(strides):
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 16, 8))
  svc = SVC(strides=strides, bottleneck=4)
  v = _init(svc, x)
  out = svc.apply(v, x)
  t, h, w = 16 // strides[0], 16 // strides[1], 16 // strides[2]
  assert out.tokens.shape == (2, t * h * w, 8)
  assert svc.num_tokens(16, 16, 16) == t * h * w
  assert out.mask.all()
  h, _ = svc.apply(v, x, method=SVC.encode)
  recon = svc.apply(v, h, (16, 16, 16), method=SVC.decode)
  assert recon.shape == x.shape


def test_block_strides_multiply_to_total():
  for s in RATIOS + [(3, 3, 3), (1, 1, 1), (6, 4, 2)]:
    blocks = block_strides(s)
    assert tuple(np.prod(blocks, axis=0)) == s


def test_non_dividing_grid_padding_policy():
  """SigLIP-384's 27×27 grid with 4×4×4: edge-padded to 28×28 → 7×7, recon cropped to 27×27."""
  x = jax.random.normal(jax.random.key(0), (1, 6, 27, 27, 8))
  svc = SVC(strides=(4, 4, 4), bottleneck=4)
  v = _init(svc, x)
  h, _ = svc.apply(v, x, method=SVC.encode)
  assert h.shape == (1, 2, 7, 7, 8)
  assert svc.num_tokens(6, 27, 27) == 2 * 7 * 7
  loss, metrics = svc.apply(v, x, rngs={"noise": jax.random.key(2)},
                            method=SVC.reconstruction_loss)
  assert np.isfinite(loss) and metrics["l1"] > 0


@pytest.mark.parametrize("strides", [(4, 4, 4), (2, 4, 4)])
def test_residual_latent_is_avgpool_when_encoder_output_is_zero(strides):
  x = jax.random.normal(jax.random.key(3), (2, 8, 27, 27, 8))
  svc = SVC(strides=strides, bottleneck=4, constraint="residual")
  v = _init(svc, x)
  p = jax.tree.map(lambda a: a, v["params"])
  out_proj = p["encoder"]["out_proj"]
  p["encoder"]["out_proj"] = jax.tree.map(jnp.zeros_like, out_proj)  # C(f) ≡ 0
  h, _ = svc.apply({"params": p}, x, method=SVC.encode)
  np.testing.assert_array_equal(np.asarray(h), np.asarray(avgpool3d(x, strides)))
  np.testing.assert_allclose(np.asarray(h), _numpy_avgpool(np.asarray(x, np.float64), strides),
                             atol=1e-6)
  # and with the real (non-zero) encoder the latent differs from plain pooling
  h_full, _ = svc.apply(v, x, method=SVC.encode)
  assert np.abs(np.asarray(h_full) - np.asarray(h)).max() > 1e-3


@pytest.mark.parametrize("constraint", ["none", "vae", "residual"])
def test_gradients_reach_every_parameter(constraint):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 8))
  svc = SVC(strides=(2, 2, 2), bottleneck=4, constraint=constraint)
  v = _init(svc, x)

  def loss(p):
    return svc.apply({"params": p}, x, rngs={"noise": jax.random.key(5)},
                     method=SVC.reconstruction_loss)[0]

  grads = jax.grad(loss)(v["params"])
  norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).max()), grads))
  assert all(np.isfinite(n) and n > 0 for n in norms), norms


def test_vae_samples_and_reports_kl():
  x = jax.random.normal(jax.random.key(0), (1, 4, 8, 8, 8))
  svc = SVC(strides=(2, 2, 2), bottleneck=4, constraint="vae", kl_weight=0.5)
  v = _init(svc, x)
  enc = lambda seed: svc.apply(v, x, False, rngs={"noise": jax.random.key(seed)},  # noqa: E731
                               method=SVC.encode)
  (h1, l1), (h2, _) = enc(1), enc(2)
  assert not np.allclose(h1, h2)  # reparameterised samples differ
  mean, _ = svc.apply(v, x, True, method=SVC.encode)
  assert np.isfinite(l1["kl"]) and l1["kl"] >= 0
  loss, m = svc.apply(v, x, rngs={"noise": jax.random.key(1)}, method=SVC.reconstruction_loss)
  np.testing.assert_allclose(loss, m["l1"] + 0.5 * m["kl"], rtol=1e-6)
  assert mean.shape == h1.shape


def test_bad_config_values_are_named():
  x = jnp.zeros((1, 4, 8, 8, 8))
  with pytest.raises(ValueError, match="constraint"):
    _init(SVC(constraint="ae"), x)
  with pytest.raises(ValueError, match="strides"):
    _init(SVC(strides=(0, 2, 2)), x)
  assert REDUCERS.get("svc") is SVC


def test_reconstruction_loss_decreases_on_real_video():
  """Real frames (the shipped clip with many cuts) as 8×8-pixel patch features."""
  from longvid_jax.assets import asset
  from longvid_jax.data import video
  frames = video.read_frames(asset("cuts_video"), np.arange(0, 64, 2), size=(64, 64)).frames
  f = frames.astype(np.float32) / 255.0  # [32,64,64,3]
  f = f.reshape(32, 8, 8, 8, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 32, 8, 8, 192)
  f = jnp.asarray(f[:, :16]), jnp.asarray(f[:, 16:])
  x = jnp.concatenate(f, axis=0)  # [2,16,8,8,192]
  svc = SVC(strides=(4, 4, 4), bottleneck=32)
  import optax
  v = _flax_init(svc, x)
  tx = optax.adam(3e-3)
  params, opt = v["params"], tx.init(v["params"])

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda p: svc.apply(
        {"params": p}, x, rngs={"noise": jax.random.key(0)},
        method=SVC.reconstruction_loss)[0])(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  losses = []
  for _ in range(40):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses
