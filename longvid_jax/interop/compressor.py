"""Reducer + projector as one PyTorch-readable part: OUT/compressor (model.safetensors +
config.json), which `interop.torch_compressor.Compressor` runs. The SVC is written in that
module's layout; reducers without a PyTorch port keep ours under dotted names."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

from longvid_jax.interop import files, tables
from longvid_jax.interop.tables import Rule
from longvid_jax.models.reducers import svc
from longvid_jax.registry import Registry

COMPRESSOR_FORMAT = "longvid_compressor"


def _conv3d_in(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Conv3d weight[O,I,kt,kh,kw] → flax kernel[kt,kh,kw,I,O]."""
  del cfg
  return np.ascontiguousarray(np.asarray(x).transpose(2, 3, 4, 1, 0))


def _conv3d_out(x: np.ndarray, cfg: Any) -> np.ndarray:
  del cfg
  return np.ascontiguousarray(np.asarray(x).transpose(4, 3, 0, 1, 2))


def _dense(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"{ours}/kernel", f"{theirs}.weight", tables.transpose, tables.transpose),
          Rule(f"{ours}/bias", f"{theirs}.bias")]


def _norm(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"{ours}/scale", f"{theirs}.weight"), Rule(f"{ours}/bias", f"{theirs}.bias")]


def svc_rules() -> list[Rule]:
  """Our SVC params ↔ `torch_compressor` names. Kernels of both cascades are stored as Conv3d
  weights [O,I,kt,kh,kw]; the decoder's are applied as jax's conv_transpose does (correlation
  over the zero-interleaved input, kernel not flipped)."""
  out = []
  for side in ("encoder", "decoder"):
    block = f"{side}/block_{{i}}"
    theirs = f"reducer.{side}.block_{{i}}"
    out += _norm(f"{block}/norm", f"{theirs}.norm")
    for conv in ("spatial", "temporal"):
      out += [Rule(f"{block}/{conv}/kernel", f"{theirs}.{conv}.weight", _conv3d_in, _conv3d_out),
              Rule(f"{block}/{conv}/bias", f"{theirs}.{conv}.bias")]
    out += _norm(f"{side}/out_norm", f"reducer.{side}.out_norm")
    out += _dense(f"{side}/out_proj", f"reducer.{side}.out_proj")
  return out


def projector_rules(norm: bool = False) -> list[Rule]:
  return _dense("linear_{i}", "projector.linear_{i}") + (
      _norm("norm", "projector.norm") if norm else [])


@dataclasses.dataclass(frozen=True)
class TorchPort:
  """A reducer `torch_compressor` can run: its name map and the config fields it needs."""
  rules: Callable[[], list[Rule]]
  config: Callable[[Any], dict]  # reducer module → extra config.json fields


PORTS: Registry[TorchPort] = Registry("reducer with a PyTorch port")
PORTS.register("svc")(TorchPort(svc_rules, lambda r: {
    "block_strides": [list(s) for s in svc.block_strides(r.strides)], "layer_norm_eps": 1e-6}))


def _flat_rules(prefix: str, params: Mapping) -> list[Rule]:
  """Reducers without a PyTorch port: tensors keep our layout, names become dotted paths."""
  return [Rule(k, prefix + k.replace("/", ".")) for k in traverse_util.flatten_dict(
      dict(params), sep="/")]


def _module_fields(module) -> dict:
  skip = {"parent", "name"}
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in skip}


def _dtype_name(tree) -> str:
  names = sorted({np.dtype(np.asarray(x).dtype).name for x in jax.tree.leaves(tree)})
  return names[0] if len(names) == 1 else "mixed"


def write_compressor(reducer, reducer_name: str, params: Mapping, out_dir: str | os.PathLike,
                     width: int, llm_width: int, projector_depth: int) -> pathlib.Path:
  """params {"reducer": ..., "projector": ...} → OUT/compressor (model.safetensors +
  config.json). Reducers with a PyTorch port (`PORTS`) are written in `torch_compressor`
  layout; the others in ours."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors: dict[str, np.ndarray] = {}
  port = PORTS.get(reducer_name) if reducer_name in PORTS else None
  layout = "flax" if port is None else "torch"
  red = dict(params.get("reducer") or {})
  if red:
    rules = _flat_rules("reducer.", red) if port is None else port.rules()
    tensors.update(tables.to_theirs(red, rules))
  norm = "norm" in params["projector"]
  tensors.update(tables.to_theirs(dict(params["projector"]), projector_rules(norm)))
  fields = _module_fields(reducer)
  config = {
      "format": COMPRESSOR_FORMAT, "layout": layout, "dtype": _dtype_name(tensors),
      "reducer": {"name": reducer_name, "args": _tuples_to_lists(fields), "width": width},
      "projector": {"depth": projector_depth, "in_features": width, "out_features": llm_width,
                    "norm": norm},
  }
  if port is not None:
    config["reducer"].update(port.config(reducer))
  files.save_safetensors(tensors, out / "model.safetensors")
  (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
  return out


def _tuples_to_lists(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _tuples_to_lists(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_tuples_to_lists(v) for v in x]
  return x


def read_compressor(source: str | os.PathLike) -> tuple[dict, dict]:
  """OUT/compressor → ({"reducer": ..., "projector": ...} in stored dtypes, its config)."""
  path = pathlib.Path(source).expanduser()
  cfg_file, weights = path / "config.json", path / "model.safetensors"
  if not (cfg_file.is_file() and weights.is_file()):
    raise FileNotFoundError(f"{path} is not an exported compressor (expected config.json and "
                            "model.safetensors, as `longvid export` writes them)")
  config = json.loads(cfg_file.read_text())
  if config.get("format") != COMPRESSOR_FORMAT:
    raise ValueError(f"{cfg_file}: format {config.get('format')!r}, expected "
                     f"{COMPRESSOR_FORMAT!r}")
  tensors, _ = files.read_safetensors([weights])
  red = {k: v for k, v in tensors.items() if k.startswith("reducer.")}
  proj = {k: v for k, v in tensors.items() if k.startswith("projector.")}
  out = {"projector": tables.to_ours(proj, projector_rules(
      bool(config.get("projector", {}).get("norm", False))))}
  if red:
    if config["layout"] == "torch":
      out["reducer"] = tables.to_ours(red, PORTS.get(config["reducer"]["name"]).rules())
    else:
      out["reducer"] = traverse_util.unflatten_dict(
          {k[len("reducer."):].replace(".", "/"): v for k, v in red.items()}, sep="/")
  return out, config
