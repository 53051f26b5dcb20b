"""Vision encoder checkpoints ↔ our Flax params: SigLIP (HF safetensors) and EfficientNet-Lite0.

SigLIP: a Hugging Face `SiglipVisionModel` directory, or a full `SiglipModel` one (tensors under
`vision_model.`, text tower ignored), single-file or sharded safetensors, is read with the
`safetensors` package alone; export writes config.json + model.safetensors that
`SiglipVisionModel.from_pretrained` loads. Neither direction needs torch or transformers.

EfficientNet-Lite0: an efficientnet_pytorch-style state dict (`_conv_stem`, `_blocks.N...`) is
read from its .pth without torch (`interop/pth.py`) and converted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax import assets, trees
from longvid_jax.interop import files, pth, tables
from longvid_jax.interop.tables import Rule
from longvid_jax.models.encoders import efficientnet
from longvid_jax.models.encoders.siglip import SiglipConfig, SiglipVisionEncoder
from longvid_jax.registry import Registry


# --- hooks ----------------------------------------------------------------------------------------

def _want_ndim(x: np.ndarray, ndim: int, what: str) -> None:
  if x.ndim != ndim:
    raise ValueError(f"{what} must have {ndim} dims, got shape {x.shape}")


def _linear_in(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Linear weight[out,in] → Dense kernel[in,out]."""
  _want_ndim(x, 2, "a Linear weight")
  return tables.transpose(x, cfg)


def _linear_out(x: np.ndarray, cfg: Any) -> np.ndarray:
  return tables.transpose(x, cfg)


def _conv_in(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Conv2d weight[O,I,kh,kw] → HWIO kernel[kh,kw,I,O]."""
  del cfg
  _want_ndim(x, 4, "a Conv2d weight")
  return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


def _conv_out(x: np.ndarray, cfg: Any) -> np.ndarray:
  del cfg
  return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


# --- reading and writing safetensors --------------------------------------------------------------

def read_safetensors(source: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file, or of a directory (single file or sharded index);
  params stay float32 whatever the checkpoint stores (bf16/fp16 hub files)."""
  tensors, _ = files.read_safetensors(files.safetensors_files(pathlib.Path(source)))
  return {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in tensors.items()}


def _flat_f32(params: Mapping) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(trees.strip_boxes(params), sep="/").items()}


# --- SigLIP ---------------------------------------------------------------------------------------

def siglip_rules() -> list[Rule]:
  """Our param paths ↔ HF SiglipVisionModel tensor names (without any `vision_model.` prefix)."""
  lin = lambda ours, theirs: [  # noqa: E731
      Rule(f"{ours}/kernel", f"{theirs}.weight", _linear_in, _linear_out),
      Rule(f"{ours}/bias", f"{theirs}.bias")]
  ln = lambda ours, theirs: [  # noqa: E731
      Rule(f"{ours}/scale", f"{theirs}.weight"), Rule(f"{ours}/bias", f"{theirs}.bias")]
  out = [
      Rule("embeddings/patch_embedding/kernel", "embeddings.patch_embedding.weight",
           _conv_in, _conv_out),
      Rule("embeddings/patch_embedding/bias", "embeddings.patch_embedding.bias"),
      Rule("embeddings/position_embedding/embedding", "embeddings.position_embedding.weight"),
      *ln("post_layernorm", "post_layernorm"),
      Rule("head/probe", "head.probe"),
      Rule("head/in_proj_kernel", "head.attention.in_proj_weight", _linear_in, _linear_out),
      Rule("head/in_proj_bias", "head.attention.in_proj_bias"),
      *lin("head/out_proj", "head.attention.out_proj"),
      *ln("head/layernorm", "head.layernorm"),
      *lin("head/mlp/fc1", "head.mlp.fc1"),
      *lin("head/mlp/fc2", "head.mlp.fc2"),
  ]
  for ours, theirs in [("layers_{i}/layer_norm1", "encoder.layers.{i}.layer_norm1"),
                       ("layers_{i}/layer_norm2", "encoder.layers.{i}.layer_norm2")]:
    out += ln(ours, theirs)
  for name in ["q_proj", "k_proj", "v_proj", "out_proj"]:
    out += lin(f"layers_{{i}}/self_attn/{name}", f"encoder.layers.{{i}}.self_attn.{name}")
  for name in ["fc1", "fc2"]:
    out += lin(f"layers_{{i}}/mlp/{name}", f"encoder.layers.{{i}}.mlp.{name}")
  return out


def siglip_expected_shapes(cfg) -> dict:
  s = cfg.image_size
  return trees.param_shapes(SiglipVisionEncoder(cfg), jnp.zeros((1, s, s, cfg.num_channels)))


def siglip_from_hf_tensors(tensors: Mapping[str, np.ndarray], cfg) -> dict:
  """HF tensors (SiglipVisionModel names, optionally under `vision_model.` as in SiglipModel)
  → our params, checked name by name and shape by shape against the model `cfg` describes."""
  tensors = dict(tensors)
  if any(k.startswith("vision_model.") for k in tensors):
    tensors = {k[len("vision_model."):]: v for k, v in tensors.items()
               if k.startswith("vision_model.")}
  ignore = [] if cfg.use_head else [r"^head\."]
  params = tables.to_ours(tensors, siglip_rules(), cfg, ignore=ignore)
  tables.check_complete(params, siglip_expected_shapes(cfg))
  return params


def siglip_to_hf_tensors(params: Mapping, cfg, prefix: str = "") -> dict[str, np.ndarray]:
  """Our params → HF SiglipVisionModel tensors (float32), names optionally prefixed."""
  tensors = tables.to_theirs(_flat_nested(params), siglip_rules(), cfg)
  return {prefix + k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _flat_nested(params: Mapping) -> dict:
  return traverse_util.unflatten_dict(_flat_f32(params), sep="/")


def _siglip_config(source: str | os.PathLike, **overrides) -> tuple[pathlib.Path, SiglipConfig]:
  """(checkpoint path, config) from config.json and the tensor names, reading no weights."""
  path = files.model_dir(source)
  root = path if path.is_dir() else path.parent
  cfg = SiglipConfig.from_hf(files.read_config(root), **overrides)
  names = files.LazyTensors(files.safetensors_files(path))  # headers only
  if cfg.use_head and not any(re.match(r"^(vision_model\.)?head\.", k) for k in names):
    if "use_head" in overrides:
      raise ValueError(f"{path}: use_head=True but the checkpoint has no pooling head")
    cfg = dataclasses.replace(cfg, use_head=False)
  return path, cfg


def import_siglip(source: str | os.PathLike, **overrides):
  """HF SigLIP directory (or hub id) → (params, SiglipConfig).

  `overrides` set SiglipConfig fields the checkpoint does not fix: select_layer, dtype, and
  use_head=False to drop the pooling head.
  """
  path, cfg = _siglip_config(source, **overrides)
  tensors = read_safetensors(path)
  try:
    params = siglip_from_hf_tensors(tensors, cfg)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return params, cfg


def export_siglip(params: Mapping, cfg, out_dir: str | os.PathLike,
                  prefix: str = "") -> pathlib.Path:
  """Write config.json + model.safetensors loadable by `SiglipVisionModel.from_pretrained`.

  `prefix="vision_model."` writes the layout older transformers releases expect; the installed
  one reads both."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  flat = traverse_util.flatten_dict(trees.strip_boxes(params), sep="/")
  if not cfg.use_head:
    flat = {k: v for k, v in flat.items() if not k.startswith("head/")}
  params = traverse_util.unflatten_dict(flat, sep="/")
  tables.check_complete(_flat_nested(params), siglip_expected_shapes(cfg))
  files.save_safetensors(siglip_to_hf_tensors(params, cfg, prefix), out / "model.safetensors")
  (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")
  return out


# --- EfficientNet-Lite0 ---------------------------------------------------------------------------

def _bn(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"{ours}/{a}", f"{theirs}.{b}") for a, b in
          [("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")]]


def efficientnet_rules() -> list[Rule]:
  """Our param paths ↔ efficientnet_pytorch state-dict names (`_conv_stem`, `_blocks.N...`)."""
  def conv(ours: str, theirs: str) -> Rule:
    return Rule(f"{ours}/kernel", f"{theirs}.weight", _conv_in, _conv_out)

  out = [conv("conv_stem", "_conv_stem"), *_bn("bn0", "_bn0"),
         conv("conv_head", "_conv_head"), *_bn("bn1", "_bn1")]
  for name in ["expand_conv", "depthwise_conv", "project_conv"]:
    out.append(conv(f"blocks_{{i}}/{name}", f"_blocks.{{i}}._{name}"))
  for name in ["bn0", "bn1", "bn2"]:
    out += _bn(f"blocks_{{i}}/{name}", f"_blocks.{{i}}._{name}")
  return out


# the classifier is not part of a frame encoder; BN step counters carry no weights
EFFICIENTNET_IGNORE = [r"num_batches_tracked$", r"^_fc\."]


def efficientnet_expected_shapes() -> dict:
  cfg = efficientnet.EfficientNetConfig(image_size=32)  # params do not depend on the image size
  return trees.param_shapes(efficientnet.EfficientNetLite0(cfg), jnp.zeros((1, 32, 32, 3)))


def efficientnet_from_torch_state_dict(state: Mapping[str, Any]) -> dict:
  """efficientnet_pytorch-style Lite0 state dict (tensors or arrays) → our params, checked."""
  return tables.from_state_dict(state, efficientnet_rules(), efficientnet_expected_shapes(),
                                ignore=EFFICIENTNET_IGNORE)


def efficientnet_to_torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Our params → efficientnet_pytorch names (no classifier, no step counters)."""
  return tables.to_theirs(_flat_nested(params), efficientnet_rules())


def load_efficientnet_lite0(source: str | os.PathLike | None = None) -> dict:
  """Lite0 params from a .safetensors file (our names, or efficientnet_pytorch names as
  `export_efficientnet` writes them), a directory holding one, or a PyTorch .pth.

  With no argument the ImageNet weights (offline asset `efficientnet_lite0`) are used.
  """
  if source is None:
    source = assets.asset("efficientnet_lite0")
  source = pathlib.Path(source)
  if source.is_dir():
    source = source / "model.safetensors"
  if not source.is_file():
    raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {source} (pass a PyTorch "
                            ".pth state dict, a .safetensors file or an exported directory)")
  if source.suffix == ".safetensors":
    tensors = read_safetensors(source)
    if any("/" in k for k in tensors):
      params = traverse_util.unflatten_dict(tensors, sep="/")
    else:
      try:
        params = efficientnet_from_torch_state_dict(tensors)
      except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
  else:
    try:
      params = efficientnet_from_torch_state_dict(pth.load_state_dict(source))
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None
  try:
    tables.check_complete(params, efficientnet_expected_shapes())
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None
  return params


def export_efficientnet(params: Mapping, cfg, out_dir: str | os.PathLike) -> pathlib.Path:
  """Write model.safetensors in efficientnet_pytorch names (`EfficientNet.from_name(
  "efficientnet-lite0").load_state_dict(..., strict=False)` reads it; only the classifier and BN
  step counters are absent) and a config.json with our encoder settings."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tables.check_complete(_flat_nested(params), efficientnet_expected_shapes())
  flat = traverse_util.flatten_dict(trees.strip_boxes(dict(params)), sep="/")
  tensors = tables.to_theirs(traverse_util.unflatten_dict(
      {k: np.asarray(v) for k, v in flat.items()}, sep="/"), efficientnet_rules())
  files.save_safetensors(tensors, out / "model.safetensors")
  config = {"model_type": "efficientnet_lite0", "architecture": "efficientnet-lite0",
            "naming": "efficientnet_pytorch", "mean": list(efficientnet.IMAGENET_MEAN),
            "std": list(efficientnet.IMAGENET_STD), **dataclasses.asdict(cfg)}
  (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return out



# --- one converter per encoder --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Converter:
  """How an encoder's weights are read and written; `load` may fix the config's shapes, and
  `config` says how without reading the weights."""
  load: Callable[[str, Any], tuple[dict, Any]]  # (source, cfg) -> (params, cfg)
  save: Callable[[Mapping, Any, str | os.PathLike], pathlib.Path]  # (params, cfg, out) -> out
  config: Callable[[str, Any], Any] = lambda source, cfg: cfg  # (source, cfg) -> cfg


CONVERTERS: Registry[Converter] = Registry("encoder checkpoint converter")


def _siglip_choices(cfg: SiglipConfig) -> dict:
  """The checkpoint fixes the tower's shape; `cfg` contributes only our own choices."""
  kw = dict(select_layer=cfg.select_layer, dtype=cfg.dtype)
  if not cfg.use_head:
    kw["use_head"] = False
  return kw


CONVERTERS.register("siglip")(Converter(
    lambda source, cfg: import_siglip(source, **_siglip_choices(cfg)), export_siglip,
    lambda source, cfg: _siglip_config(source, **_siglip_choices(cfg))[1]))
CONVERTERS.register("efficientnet_lite0")(Converter(
    lambda source, cfg: (load_efficientnet_lite0(assets.resolve(source)), cfg),
    export_efficientnet))


def pretrained_config(name: str, source: str, cfg):
  """The config encoder `name`'s checkpoint at `source` implies, without reading its weights."""
  return CONVERTERS.get(name).config(source, cfg)


def load_pretrained(name: str, source: str, cfg) -> tuple[dict, Any]:
  """(params, cfg) of encoder `name` from an asset name, file, HF directory or hub id."""
  return CONVERTERS.get(name).load(source, cfg)


def save_pretrained(name: str, params: Mapping, cfg, out_dir: str | os.PathLike) -> pathlib.Path:
  """Write `params` where `load_pretrained` and the PyTorch counterpart read them."""
  return CONVERTERS.get(name).save(params, cfg, out_dir)
