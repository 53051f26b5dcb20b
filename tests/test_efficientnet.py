"""EfficientNet-Lite0 encoder and its checkpoint conversion, against a PyTorch reference.

Reference: `efficientnet_lite_pytorch==0.1.0` (Apache-2.0, PyPI), the efficientnet_pytorch fork
by the publisher of the weights asset, which defines Lite0 (ReLU6, no SE, fixed stem/head, TF
"SAME" padding). It is imported if installed, else its wheel is fetched once from the package
index into the cache. The released state dict is loaded into it with strict=True, so every key
is consumed, and both networks run on real frames decoded from the `cuts_video` asset.

Tolerances: in float64 (both sides) the default stride-16 output agrees to 1e-9, which pins
the structure exactly. In float32 the 1280-ch head and stride-32 maps agree to 1e-4 max abs;
the stride-8/16 maps hold values up to ~50, where the float32 reference itself is 1-2e-4 away
from its own float64 result, so there the bound is relative: 1e-5 × max|reference|.
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

from longvid_jax import assets  # noqa: E402
from longvid_jax.interop import vision  # noqa: E402
from longvid_jax.models.encoders import ENCODERS  # noqa: E402
from longvid_jax.models.encoders.efficientnet import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, OUTPUTS, EfficientNetConfig, EfficientNetLite0)

REF_PACKAGE, REF_VERSION = "efficientnet-lite-pytorch", "0.1.0"
REF_BLOCK = {"stride8": 4, "stride16": 10, "stride32": 15}


def _reference_module():
  try:
    return importlib.import_module("efficientnet_lite_pytorch")
  except ImportError:
    pass
  import filelock
  root = assets.cache_dir() / f"{REF_PACKAGE}-{REF_VERSION}"
  root.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(root) + ".lock"):
    if not (root / "efficientnet_lite_pytorch" / "model.py").exists():
      try:
        wheel = assets._download(REF_PACKAGE, REF_VERSION, root)
      except RuntimeError as e:
        pytest.skip(f"PyTorch reference unavailable: {e}")
      with zipfile.ZipFile(wheel) as zf:
        zf.extractall(root)
  # imported as a package from the unpacked wheel, without touching sys.path
  pkg = root / "efficientnet_lite_pytorch"
  spec = importlib.util.spec_from_file_location("efficientnet_lite_pytorch", pkg / "__init__.py",
                                                submodule_search_locations=[str(pkg)])
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def state_dict():
  return torch.load(assets.asset("efficientnet_lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(state_dict):
  net = _reference_module().EfficientNet.from_name("efficientnet-lite0")  # static pads for 224
  net.load_state_dict(state_dict, strict=True)
  return net.eval()


@pytest.fixture(scope="module")
def params():
  return vision.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def frames():
  """Four real frames from different shots, decoded and resized to 224×224 by PyAV."""
  want, out = {0, 700, 1500, 2300}, []
  with av.open(str(assets.asset("cuts_video"))) as container:
    for i, frame in enumerate(container.decode(video=0)):
      if i in want:
        out.append(frame.to_ndarray(format="rgb24", width=224, height=224))
      if len(out) == len(want):
        break
  return np.stack(out).astype(np.float32) / 255.0


def _run_reference(net, frames: np.ndarray) -> dict[str, np.ndarray]:
  mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
  x = torch.from_numpy(((frames - mean) / std).astype(frames.dtype)).permute(0, 3, 1, 2)
  got = {}
  hooks = [net._blocks[i].register_forward_hook(
      lambda m, a, o, name=name: got.__setitem__(name, o)) for name, i in REF_BLOCK.items()]
  with torch.no_grad():
    got["head"] = net.extract_features(x)
  for h in hooks:
    h.remove()
  return {k: v.permute(0, 2, 3, 1).numpy() for k, v in got.items()}


def _bound(output: str, ref: np.ndarray) -> float:
  return 1e-4 if output in ("head", "stride32") else 1e-5 * np.abs(ref).max()


def test_features_match_pytorch_reference_float32(reference, params, frames):
  """All four feature maps from one jitted pass (intermediates captured), plus the default
  output through its own truncated network."""
  assert frames.std() > 0.1  # real image content, not a blank frame
  ref = _run_reference(reference, frames)
  head = EfficientNetLite0(EfficientNetConfig(output="head"))
  names = {f"blocks_{i}": k for k, i in REF_BLOCK.items()}
  run = jax.jit(lambda p, x: head.apply(
      {"params": p}, x, capture_intermediates=lambda mdl, _: mdl.name in names))
  out, state = run(params, jnp.asarray(frames))
  ours = {names[k]: v["__call__"][0] for k, v in state["intermediates"].items()}
  ours["head"] = out
  assert ours.keys() == set(OUTPUTS)
  for output, got in ours.items():
    cfg = EfficientNetConfig(output=output)
    assert got.shape == (len(frames), *cfg.grid, cfg.width) == ref[output].shape
    err = np.abs(np.asarray(got) - ref[output]).max()
    print(f"efficientnet float32 {output}: max abs diff {err:.2e} "
          f"(max |ref| {np.abs(ref[output]).max():.1f})")
    assert err < _bound(output, ref[output]), (output, err, np.abs(ref[output]).max())
  default = EfficientNetLite0(EfficientNetConfig())
  assert default.cfg.output == "stride16"
  got = np.asarray(jax.jit(default.apply)({"params": params}, jnp.asarray(frames)))
  err = np.abs(got - ref["stride16"]).max()
  print(f"efficientnet float32 default (stride16, truncated run): max abs diff {err:.2e}")
  assert err < _bound("stride16", ref["stride16"])


@pytest.mark.slow  # ~20 s: compiling the float64 network is slow on a busy CPU
def test_features_match_pytorch_reference_float64(reference, params, frames):
  try:
    ref = _run_reference(reference.double(), frames[:1].astype(np.float64))
  finally:
    reference.float()
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    cfg = EfficientNetConfig(output="stride16", dtype="float64")
    ours = np.asarray(jax.jit(EfficientNetLite0(cfg).apply)(
        {"params": p64}, jnp.asarray(frames[:1], jnp.float64)))
  assert ours.dtype == np.float64
  err = np.abs(ours - ref["stride16"]).max()
  print(f"efficientnet float64 stride16: max abs diff {err:.2e}")
  assert err < 1e-9


def test_round_trip_reproduces_the_state_dict(state_dict, params, reference):
  back = vision.efficientnet_to_torch_state_dict(params)
  kept = {k: v for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")}
  assert back.keys() == kept.keys()
  for k, v in kept.items():
    assert np.array_equal(back[k], v.numpy()), k
  # and it loads into the reference network with only the classifier left over
  net = _reference_module().EfficientNet.from_name("efficientnet-lite0")
  result = net.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=False)
  assert set(result.missing_keys) == {"_fc.weight", "_fc.bias"}
  assert not result.unexpected_keys


def test_released_weights_load_without_torch(monkeypatch, state_dict):
  want = vision.efficientnet_from_torch_state_dict(state_dict)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  got = vision.load_efficientnet_lite0()
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, want, got))


def test_bad_weights_give_clear_errors(tmp_path, monkeypatch, state_dict):
  monkeypatch.setenv("LONGVID_CACHE", str(tmp_path / "cache"))
  with pytest.raises(FileNotFoundError, match="weights not found"):
    vision.load_efficientnet_lite0(tmp_path / "missing.pth")
  bad = dict(state_dict)
  bad["_blocks.3._depthwise_conv.weight"] = bad["_blocks.3._depthwise_conv.weight"][:, :, :3, :3]
  torch.save(bad, tmp_path / "wrong_shape.pth")
  with pytest.raises(ValueError, match=r"blocks_3/depthwise_conv/kernel: shape \(3, 3, 1, 144\) "
                                       r"but the model needs \(5, 5, 1, 144\)"):
    vision.load_efficientnet_lite0(tmp_path / "wrong_shape.pth")
  bad = {k: v for k, v in state_dict.items() if not k.startswith("_blocks.15.")}
  torch.save(bad, tmp_path / "truncated.pth")
  with pytest.raises(ValueError, match="missing blocks_15/"):
    vision.load_efficientnet_lite0(tmp_path / "truncated.pth")
  (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
    vision.load_efficientnet_lite0(tmp_path / "garbage.pth")


def test_config_shapes_registry_and_bad_input():
  for output, want in [("stride8", (28, 40)), ("stride16", (14, 112)), ("stride32", (7, 320)),
                       ("head", (7, 1280))]:
    cfg = EfficientNetConfig(output=output)
    assert (cfg.grid[0], cfg.width) == want
    c = EfficientNetConfig(image_size=97, output=output)  # SAME padding rounds strides up
    shape = jax.eval_shape(lambda c=c: EfficientNetLite0(c).init_with_output(
        jax.random.key(0), jnp.zeros((1, 97, 97, 3)))[0]).shape
    assert shape == (1, *c.grid, c.width) == (1, *[-(-97 // c.stride)] * 2, want[1]), output
  enc = ENCODERS.get("efficientnet_lite0")(EfficientNetConfig())
  assert (enc.image_size, enc.grid, enc.width) == (224, (14, 14), 112)
  with pytest.raises(ValueError, match="output='stride4'"):
    EfficientNetConfig(output="stride4")
  params = vision.efficientnet_expected_shapes()
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape), params)
  with pytest.raises(ValueError, match=r"frames\[N,224,224,3\]"):
    enc.apply({"params": zeros}, jnp.zeros((1, 160, 90, 3)))
