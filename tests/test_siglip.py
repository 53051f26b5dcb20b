"""SigLIP vision tower and its HF conversion, checked against transformers' PyTorch
`SiglipVisionModel` / `SiglipModel` built from small random configs at test time.

Every reference tensor is perturbed with noise after construction, so a swapped or dropped bias,
layernorm or head tensor changes the output. Tolerance: 1e-4 max abs (float32, CPU).
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longvid_jax.interop import vision  # noqa: E402
from longvid_jax.models.encoders import ENCODERS  # noqa: E402
from longvid_jax.models.encoders.siglip import SiglipConfig, SiglipVisionEncoder  # noqa: E402

TOL = 1e-4

CONFIGS = {
    # image not a multiple of the patch (like so400m: 384 / 14), tanh GELU, with pooling head
    "odd_grid_head": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, image_size=30, patch_size=7),
    # exact GELU, no head, two heads of 32
    "exact_gelu": dict(hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8, hidden_act="gelu",
                       vision_use_head=False, layer_norm_eps=1e-5),
}


def _randomize(model, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))


def _hf_vision(name: str, seed: int = 0):
  torch.manual_seed(seed)
  model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**CONFIGS[name])).eval()
  _randomize(model, seed)
  return model


def _frames(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _reference(model, frames: np.ndarray):
  pixels = torch.from_numpy((frames - 0.5) / 0.5).permute(0, 3, 1, 2)
  with torch.no_grad():
    return model(pixel_values=pixels, output_hidden_states=True)


def _boxed_random_params(cfg, seed: int = 0):
  """Params as our init returns them (logically partitioned boxes), filled with noise; built
  from eval_shape because compiling every initializer is slow on a busy CPU."""
  shapes = jax.eval_shape(lambda: SiglipVisionEncoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3))))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape, dtype=np.float32)), shapes)


def _ours(params, cfg, frames, method=None):
  out = SiglipVisionEncoder(cfg).apply({"params": params}, jnp.asarray(frames), method=method)
  return np.asarray(out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_patch_features_match_transformers(name, tmp_path):
  model = _hf_vision(name)
  model.save_pretrained(tmp_path)
  params, cfg = vision.import_siglip(tmp_path)
  frames = _frames(2, cfg.image_size)
  ref = _reference(model, frames)
  n, (gh, gw), c = 2, cfg.grid, cfg.width
  assert ref.last_hidden_state.shape[1] == gh * gw
  layers = cfg.num_layers
  for select in [None, -2, 0, 1, -1, layers]:
    c_sel = dataclasses.replace(cfg, select_layer=select)
    ours = _ours(params, c_sel, frames)
    assert ours.shape == (n, gh, gw, c)
    want = ref.last_hidden_state if select is None else ref.hidden_states[select]
    err = np.abs(ours.reshape(n, gh * gw, c) - want.numpy()).max()
    print(f"siglip {name} select_layer={select}: max abs diff {err:.2e}")
    assert err < TOL, (name, select, err)
  if cfg.use_head:
    err = np.abs(_ours(params, cfg, frames, "pool") - ref.pooler_output.numpy()).max()
    print(f"siglip {name} pooled: max abs diff {err:.2e}")
    assert err < TOL, ("pool", err)


def test_full_siglip_model_checkpoint_and_shards(tmp_path):
  """A SiglipModel directory (vision under `vision_model.`, plus a text tower and logit scale)
  written as several shards imports to the same features as its vision tower."""
  torch.manual_seed(1)
  cfg = transformers.SiglipConfig(
      vision_config=CONFIGS["odd_grid_head"],
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=100, max_position_embeddings=16,
                       bos_token_id=1, eos_token_id=2))
  model = transformers.SiglipModel(cfg).eval()
  _randomize(model, 1)
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  params, ours_cfg = vision.import_siglip(tmp_path, select_layer=-2)
  assert ours_cfg.use_head and ours_cfg.select_layer == -2
  frames = _frames(3, ours_cfg.image_size, seed=1)
  ref = _reference(model.vision_model, frames)
  ours = _ours(params, ours_cfg, frames).reshape(3, -1, ours_cfg.width)
  err = np.abs(ours - ref.hidden_states[-2].numpy()).max()
  print(f"siglip SiglipModel sharded select_layer=-2: max abs diff {err:.2e}")
  assert err < TOL, err


def test_round_trip_is_exact_and_export_loads_in_transformers(tmp_path):
  model = _hf_vision("odd_grid_head", seed=2)
  model.save_pretrained(tmp_path / "src")
  theirs = vision.read_safetensors(tmp_path / "src")
  params, cfg = vision.import_siglip(tmp_path / "src")
  back = vision.siglip_to_hf_tensors(params, cfg)
  assert back.keys() == theirs.keys()
  for k in theirs:
    assert back[k].dtype == theirs[k].dtype and np.array_equal(back[k], theirs[k]), k

  vision.export_siglip(params, cfg, tmp_path / "out")
  loaded, info = transformers.SiglipVisionModel.from_pretrained(
      tmp_path / "out", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  for k, v in model.state_dict().items():
    assert torch.equal(loaded.state_dict()[k], v), k
  frames = _frames(1, cfg.image_size, seed=2)
  a, b = _reference(model, frames), _reference(loaded.eval(), frames)
  assert torch.equal(a.last_hidden_state, b.last_hidden_state)
  assert np.abs(_ours(params, cfg, frames).reshape(1, -1, cfg.width)
                - b.last_hidden_state.numpy()).max() < TOL


def test_export_from_fresh_init_and_without_head(tmp_path):
  """Params made by our own init (boxed) export; without a head none is written."""
  cfg = SiglipConfig.preset("tiny", num_layers=1)
  boxed = _boxed_random_params(cfg)
  vision.export_siglip(boxed, cfg, tmp_path)
  loaded = transformers.SiglipVisionModel.from_pretrained(tmp_path).eval()
  assert not loaded.config.vision_use_head
  frames = _frames(2, 64, seed=3)
  ref = _reference(loaded, frames).last_hidden_state.numpy()
  ours = _ours(nn.unbox(boxed), cfg, frames).reshape(2, -1, cfg.width)
  assert np.abs(ours - ref).max() < TOL


def test_bfloat16_checkpoint_is_upcast(tmp_path):
  model = _hf_vision("exact_gelu", seed=4).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  params, cfg = vision.import_siglip(tmp_path)
  want = model.state_dict()["encoder.layers.0.mlp.fc1.weight"].float().numpy().T
  got = params["layers_0"]["mlp"]["fc1"]["kernel"]
  assert got.dtype == np.float32 and np.array_equal(got, want)


def test_bad_checkpoints_give_clear_errors(tmp_path):
  from safetensors.numpy import save_file
  with pytest.raises(FileNotFoundError, match="no checkpoint directory or file"):
    vision.import_siglip(tmp_path / "missing")
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps(SiglipConfig.preset("tiny").to_hf()))
  with pytest.raises(FileNotFoundError, match="only safetensors checkpoints are read"):
    vision.import_siglip(empty)

  model = _hf_vision("exact_gelu")
  model.save_pretrained(tmp_path / "m")
  tensors = vision.read_safetensors(tmp_path / "m")
  bad = dict(tensors)
  bad["encoder.layers.1.mlp.fc1.weight"] = bad["encoder.layers.1.mlp.fc1.weight"][:-1]
  save_file(bad, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(ValueError, match=r"layers_1/mlp/fc1/kernel: shape \(64, 79\)"):
    vision.import_siglip(tmp_path / "m")

  bad = dict(tensors)
  bad["embeddings.patch_embedding.weight"] = bad["embeddings.patch_embedding.weight"][0]
  save_file(bad, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(ValueError, match="Conv2d weight must have 4 dims"):
    vision.import_siglip(tmp_path / "m")

  bad = dict(tensors)
  bad["encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
  del bad["post_layernorm.bias"]
  save_file(bad, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(ValueError, match="encoder.layers.0.extra.weight"):
    vision.import_siglip(tmp_path / "m")
  del bad["encoder.layers.0.extra.weight"]
  save_file(bad, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(ValueError, match="missing post_layernorm/bias"):
    vision.import_siglip(tmp_path / "m")

  (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors"):
    vision.import_siglip(tmp_path / "m")


def test_config_hf_round_trip_presets_and_validation():
  for name in ["tiny", "base-patch16-224", "so400m-patch14-384"]:
    cfg = SiglipConfig.preset(name)
    assert SiglipConfig.from_hf(cfg.to_hf(), use_head=False) == cfg
    hf = transformers.SiglipVisionConfig(**cfg.to_hf())  # transformers accepts every field
    assert SiglipConfig.from_hf(hf, use_head=False) == cfg
  so400m = SiglipConfig.preset("so400m-patch14-384")
  assert so400m.grid == (27, 27) and so400m.width == 1152 and so400m.num_patches == 729
  full = transformers.SiglipConfig(vision_config=so400m.to_hf()).to_dict()
  assert SiglipConfig.from_hf(full, use_head=False) == so400m
  with pytest.raises(ValueError, match="select_layer=5"):
    SiglipConfig.preset("tiny", select_layer=5)
  with pytest.raises(ValueError, match="multiple of num_heads"):
    SiglipConfig.preset("tiny", num_heads=3)
  with pytest.raises(KeyError, match="so400m"):
    SiglipConfig.preset("huge")


def test_registry_interface_wrong_frames_and_logical_axes():
  cfg = SiglipConfig.preset("tiny", num_layers=1, select_layer=-2)
  enc = ENCODERS.get("siglip")(cfg)
  assert (enc.image_size, enc.grid, enc.width) == (64, (8, 8), 128)
  variables = {"params": _boxed_random_params(cfg)}
  assert isinstance(variables["params"]["layers_0"]["mlp"]["fc1"]["kernel"], nn.Partitioned)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["layers_0"]["self_attn"]["q_proj"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["layers_0"]["mlp"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert "post_layernorm" in specs  # kept even though select_layer stops before it
  with pytest.raises(ValueError, match=r"frames\[N,64,64,3\]"):
    enc.apply(variables, jnp.zeros((1, 32, 32, 3)))
