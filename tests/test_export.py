"""`longvid export` / `longvid import`: each exported part runs in PyTorch (transformers, the
EfficientNet-Lite0 reference, our torch compressor) and matches the JAX model; export → import
reproduces every tensor bit for bit, and `model.init_from` starts from the imported params.

Tiny random models (one layer, width 32) on 32-pixel frames; the EfficientNet variant uses the
real ImageNet weights (offline asset) and a bfloat16 LLM.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longvid_jax import cli  # noqa: E402
from longvid_jax import config as config_lib  # noqa: E402
from longvid_jax import runs  # noqa: E402
from longvid_jax.interop import compressor, export  # noqa: E402
from longvid_jax.interop.torch_compressor import Compressor  # noqa: E402
from longvid_jax.models.encoders.efficientnet import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, EfficientNetConfig, EfficientNetLite0)
from longvid_jax.models.llm import DecoderLM  # noqa: E402
from longvid_jax.train import checkpoint  # noqa: E402

DEMO = str(pathlib.Path(__file__).parents[1] / "configs" / "demo.py")
TOL = 1e-4

SIGLIP = dict(name="siglip", preset="tiny", weights=None,
              args=dict(image_size=32, patch_size=8, num_layers=1, hidden_size=32,
                        intermediate_size=64, num_heads=4))
EFFICIENTNET = dict(name="efficientnet_lite0", preset="lite0", weights="efficientnet_lite0",
                    args=dict(image_size=64))


def tiny_config(encoder: dict, image_size: int, llm: dict):
  c = config_lib.load(DEMO)
  c.model.encoder = encoder
  c.model.reducer.args = dict(strides=(2, 2, 2), bottleneck=8, constraint="residual")
  c.model.llm.weights = None
  c.model.llm.args = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=1,
                          num_heads=4, num_kv_heads=2, rope_theta=1e5, **llm)
  c.data.update(num_frames=4, image_size=image_size, seq_len=40)
  return c


def make_run(config, workdir: pathlib.Path):
  """A workdir as the runner leaves it (config.json, summary.json, final params), from random
  init; returns (model, params)."""
  s = runs.setup(config, mesh=runs.single_device_mesh())
  m = s.model
  params = jax.device_get(s.init_params())
  # shift norms / biases off ones and zeros so the checks see them (upwards: BN variances
  # must stay positive)
  params = jax.tree.map(lambda x: (x + 0.02 * (1 + np.sin(np.arange(x.size).reshape(x.shape)))
                                   ).astype(x.dtype), params)
  final = workdir / "4_sft" / "params"
  final.parent.mkdir(parents=True)
  checkpoint.save_params(final, params)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  (workdir / "summary.json").write_text(json.dumps({"final_params": str(final)}))
  return m, params, s.tokenizer


def flat(tree) -> dict:
  return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def assert_identical(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def check_llm(m, params, tok, out: pathlib.Path):
  cfg = m.llm.cfg
  ref = transformers.AutoModelForCausalLM.from_pretrained(out / "llm", dtype=torch.float32).eval()
  assert type(ref).__name__ == ("Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM")
  assert ref.config.vocab_size == tok.vocab_size > cfg.vocab_size  # <video> has a row
  hf_tok = transformers.AutoTokenizer.from_pretrained(out / "llm")
  assert hf_tok.convert_tokens_to_ids("<video>") == tok.video_token_id
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
  pos = np.broadcast_to(np.arange(9), ids.shape)
  p32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params["llm"])
  lm = DecoderLM(cfg)
  emb = lm.apply({"params": p32}, jnp.asarray(ids), method=DecoderLM.embed)
  ours = np.asarray(lm.apply({"params": p32}, emb, jnp.asarray(pos), jnp.ones(ids.shape, int)))
  with torch.no_grad():
    theirs = ref(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(theirs[..., :cfg.vocab_size], ours, atol=TOL, rtol=0)


def check_compressor(m, params, out: pathlib.Path, width: int):
  comp = Compressor.from_pretrained(out / "compressor")
  f = np.random.default_rng(1).standard_normal((2, 3, 5, 5, width)).astype(np.float32)
  visual, _ = m.apply({"params": params}, jnp.asarray(f), method=m.visual_embeds)
  latent = m.apply({"params": params}, jnp.asarray(f),
                   method=lambda mdl, x: mdl.reducer.encode(x)[0])
  recon = m.apply({"params": params}, latent, (3, 5, 5),
                  method=lambda mdl, h, g: mdl.reducer.decode(h, g))
  with torch.no_grad():
    t_visual = comp(torch.from_numpy(f)).numpy()
    t_recon = comp.decode(comp.encode(torch.from_numpy(f)), (3, 5, 5)).numpy()
  np.testing.assert_allclose(t_visual, np.asarray(visual), atol=TOL, rtol=0)
  np.testing.assert_allclose(t_recon, np.asarray(recon), atol=TOL, rtol=0)


def _efficientnet_reference():
  """The efficientnet_pytorch-style Lite0 definition, fetched into the asset cache the way
  test_efficientnet.py does it (files may run in any order, or on parallel workers)."""
  from test_efficientnet import _reference_module  # pylint: disable=g-import-not-at-top
  return _reference_module()  # skips the test if the reference cannot be fetched


def check_efficientnet(params, out: pathlib.Path):
  """Exported tensors load into the PyTorch definition (all but the classifier) and give our
  stride-16 features on a 224-px frame (the size its static padding is built for)."""
  from safetensors.torch import load_file
  tensors = load_file(str(out / "vision" / "model.safetensors"))
  assert len(tensors) == 245 and not any(k.startswith("_fc.") for k in tensors)
  lib = _efficientnet_reference()
  net = lib.EfficientNet.from_name("efficientnet-lite0")
  missing, unexpected = net.load_state_dict(tensors, strict=False)
  assert not unexpected and all(k.startswith("_fc.") or k.endswith("num_batches_tracked")
                                for k in missing), missing
  frame = np.random.default_rng(3).random((1, 224, 224, 3)).astype(np.float32)
  got = {}
  net._blocks[10].register_forward_hook(lambda mdl, a, o: got.__setitem__("x", o))
  x = (frame - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
  with torch.no_grad():
    net.eval().extract_features(torch.from_numpy(x).permute(0, 3, 1, 2))
  ref = got["x"].permute(0, 2, 3, 1).numpy()
  ours = np.asarray(jax.jit(EfficientNetLite0(EfficientNetConfig()).apply)(
      {"params": params}, jnp.asarray(frame)))
  assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max()


def round_trip(out: pathlib.Path, params, tmp_path: pathlib.Path):
  imported = export.import_hf(tmp_path / "imported", out)
  assert runs.open_run(imported).params_dir == imported / "params"
  assert_identical(export.load(imported).params, params)


def test_siglip_llama_export_matches_pytorch_and_round_trips(tmp_path):
  config = tiny_config(SIGLIP, 32, dict(qkv_bias=False))
  workdir, out = tmp_path / "run", tmp_path / "export"
  m, params, tok = make_run(config, workdir)
  paths = export.export_hf(workdir / "4_sft" / "params", out)  # a params dir inside a run
  assert sorted(paths) == ["compressor", "config", "llm", "vision"]
  check_llm(m, params, tok, out)
  vis = transformers.SiglipVisionModel.from_pretrained(out / "vision").eval()
  frames = np.random.default_rng(2).random((2, 32, 32, 3)).astype(np.float32)
  ours = m.apply({"params": params}, jnp.asarray(frames[:, None]), method=m.features)
  with torch.no_grad():
    pixels = torch.from_numpy((frames - 0.5) / 0.5).permute(0, 3, 1, 2)
    theirs = vis(pixel_values=pixels).last_hidden_state.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours).reshape(theirs.shape), atol=TOL, rtol=0)
  check_compressor(m, params, out, width=32)
  round_trip(out, params, tmp_path)


def test_efficientnet_bf16_qwen2_export_import_and_init_from(tmp_path):
  # scanned layers (the demo's layout): export unstacks them, import stacks them back
  config = tiny_config(EFFICIENTNET, 64, dict(qkv_bias=True, param_dtype="bfloat16",
                                              scan_layers=True))
  workdir, out = tmp_path / "run", tmp_path / "export"
  m, params, tok = make_run(config, workdir)
  assert cli.main(["export", str(workdir), "--to", "hf", str(out)]) == 0
  cfg = json.loads((out / "llm" / "config.json").read_text())
  assert cfg["dtype"] == "bfloat16" and cfg["architectures"] == ["Qwen2ForCausalLM"]
  from safetensors import safe_open
  with safe_open(str(out / "llm" / "model.safetensors"), "pt") as f:
    assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
  check_llm(m, params, tok, out)
  check_compressor(m, params, out, width=m.encoder.width)
  check_efficientnet(params["encoder"], out)

  assert cli.main(["import", str(out), str(tmp_path / "imported")]) == 0
  assert_identical(export.load(tmp_path / "imported").params, params)

  # a run starting from the import: init_params takes every param from it
  config.model.init_from = str(tmp_path / "imported")
  assert_identical(runs.setup(config, mesh=runs.single_device_mesh()).init_params(), params)


def test_import_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config"):
    export.import_hf(tmp_path / "x", llm=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not an exported compressor"):
    compressor.read_compressor(tmp_path)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    runs.open_run(tmp_path)
  with pytest.raises(FileNotFoundError, match="not a params checkpoint"):
    runs.init_from_dir(tmp_path / "missing")
