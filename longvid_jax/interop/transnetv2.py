"""TransNetV2 PyTorch state dict ↔ our Flax params; the released .pth is read without torch."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax import assets, trees
from longvid_jax.interop import pth, tables
from longvid_jax.interop.tables import Rule
from longvid_jax.sampling.transnetv2 import TransNetV2


def _spatial_in(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Conv3d weight[2F,C,1,3,3] → HWIO kernel[3,3,C,2F]."""
  del cfg
  return np.ascontiguousarray(x[:, :, 0].transpose(2, 3, 1, 0))


def _spatial_out(x: np.ndarray, cfg: Any) -> np.ndarray:
  del cfg
  return np.ascontiguousarray(x.transpose(3, 2, 0, 1)[:, :, None])


def _temporal_in(x: np.ndarray, cfg: Any) -> np.ndarray:
  """torch Conv3d weight[F,2F,3,1,1] → taps kernel[3,2F,F]."""
  del cfg
  return np.ascontiguousarray(x[:, :, :, 0, 0].transpose(2, 1, 0))


def _temporal_out(x: np.ndarray, cfg: Any) -> np.ndarray:
  del cfg
  return np.ascontiguousarray(x.transpose(2, 1, 0)[:, :, :, None, None])


def rules(stages: int = 3, blocks: int = 2, dilations=(1, 2, 4, 8)) -> list[Rule]:
  out = []
  for s in range(stages):
    for b in range(blocks):
      ours, theirs = f"SDDCNN_{s}/DDCNN_{b}", f"SDDCNN.{s}.DDCNN.{b}"
      for d in dilations:
        out.append(Rule(f"{ours}/Conv3D_{d}_spatial", f"{theirs}.Conv3D_{d}.layers.0.weight",
                        _spatial_in, _spatial_out))
        out.append(Rule(f"{ours}/Conv3D_{d}_temporal", f"{theirs}.Conv3D_{d}.layers.1.weight",
                        _temporal_in, _temporal_out))
      for mine, torch_name in [("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                               ("var", "running_var")]:
        out.append(Rule(f"{ours}/bn_{mine}", f"{theirs}.bn.{torch_name}"))
  for ours, theirs in [("frame_sim_projection", "frame_sim_layer.projection"),
                       ("frame_sim_fc", "frame_sim_layer.fc"),
                       ("color_hist_fc", "color_hist_layer.fc"),
                       ("fc1", "fc1"), ("cls_layer1", "cls_layer1"), ("cls_layer2", "cls_layer2")]:
    out.append(Rule(f"{ours}/kernel", f"{theirs}.weight", tables.transpose, tables.transpose))
    out.append(Rule(f"{ours}/bias", f"{theirs}.bias"))
  return out


IGNORE = [r"num_batches_tracked$"]


def expected_shapes() -> dict:
  return trees.param_shapes(TransNetV2(), jnp.zeros((1, 4, 27, 48, 3), jnp.uint8))


def from_torch_state_dict(state: Mapping[str, Any]) -> dict:
  """PyTorch TransNetV2 state dict (tensors or arrays) → our params, checked against the model."""
  return tables.from_state_dict(state, rules(), expected_shapes(), ignore=IGNORE)


def to_torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  return tables.to_theirs(trees.strip_boxes(params), rules())


def load_params(source: str | os.PathLike | None = None) -> dict:
  """Params from a .safetensors (ours) or a PyTorch .pth state dict.

  With no argument, the released weights (offline asset `transnetv2_weights`) are used.
  """
  from safetensors.numpy import load_file
  if source is None:
    source = assets.asset("transnetv2_weights")
  source = pathlib.Path(source)
  if not source.exists():
    raise FileNotFoundError(f"TransNetV2 weights not found: {source}")
  if source.suffix == ".safetensors":
    flat = load_file(str(source))
  else:
    params = from_torch_state_dict(pth.load_state_dict(source))
    flat = {k: np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  params = traverse_util.unflatten_dict(flat, sep="/")
  tables.check_complete(params, expected_shapes())
  return params
