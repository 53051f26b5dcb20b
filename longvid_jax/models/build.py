"""The multimodal model from `config.model` and resolved part configs, and its param shapes.

Pure construction: nothing here reads a checkpoint. `longvid_jax.runs.setup` resolves the
encoder and LLM configs (a checkpoint may fix their shapes) and the params.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from longvid_jax import trees
from longvid_jax.models import encoders as encoders_lib
from longvid_jax.models import llm as llm_lib
from longvid_jax.models import reducers as reducers_lib
from longvid_jax.models.llm import DecoderLM, LLMConfig
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.models.projector import MLPProjector
from longvid_jax.parallel import mesh as mesh_lib

GROUPS = ("encoder", "reducer", "projector", "llm")


def encoder_config(mcfg):
  """The encoder's config dataclass as `model.encoder` names it (preset + args)."""
  e = mcfg.encoder
  return encoders_lib.config(e.name, e.preset, **dict(e.args or {}))


def llm_config(mcfg) -> LLMConfig:
  """The LLM config `model.llm.args` describes (without a checkpoint)."""
  return LLMConfig(**dict(mcfg.llm.args or {}))


def reducer(mcfg) -> nn.Module:
  return reducers_lib.REDUCERS.get(mcfg.reducer.name)(**dict(mcfg.reducer.args or {}))


def model(mcfg, video_token_id: int, encoder_cfg: Any = None,
          llm_cfg: LLMConfig | None = None) -> VideoLLM:
  """The VideoLLM of `config.model`; part configs default to the config's own (no weights)."""
  encoder_cfg = encoder_config(mcfg) if encoder_cfg is None else encoder_cfg
  llm_cfg = llm_config(mcfg) if llm_cfg is None else llm_cfg
  return VideoLLM(
      encoder=encoders_lib.ENCODERS.get(mcfg.encoder.name)(encoder_cfg), reducer=reducer(mcfg),
      projector=MLPProjector(llm_cfg.hidden_size, depth=mcfg.projector.depth,
                             norm=bool(mcfg.projector.norm)),
      llm=DecoderLM(llm_cfg), video_token_id=int(video_token_id),
      train_encoder=bool(mcfg.train_encoder))


def num_visual_tokens(m: VideoLLM, config) -> int:
  h, w = m.encoder.grid
  return m.reducer.num_tokens(config.data.num_frames, h, w)


def token_budget(m: VideoLLM, config) -> dict:
  """What the compressor does to one video: the encoder's T·H·W tokens against the visual tokens
  the LLM reads, per video and per frame, and the real ratio (padding a grid that the strides do
  not divide makes it less than the strides' product)."""
  t, (h, w) = int(config.data.num_frames), m.encoder.grid
  visual = num_visual_tokens(m, config)
  return {"frames": t, "grid": [h, w], "encoder_tokens": t * h * w, "visual_tokens": visual,
          "per_frame": round(visual / t, 3), "ratio": round(t * h * w / visual, 3)}


def describe_budget(b: dict) -> str:
  return (f"{b['frames']} frames x {b['grid'][0]}x{b['grid'][1]} encoder tokens = "
          f"{b['encoder_tokens']} -> {b['visual_tokens']} visual tokens per video "
          f"({b['per_frame']:g} per frame, {b['ratio']:g}x fewer)")


def dummy_inputs(config) -> dict:
  d = config.data
  return dict(
      input_ids=jnp.zeros((1, d.seq_len), jnp.int32),
      attention_mask=jnp.ones((1, d.seq_len), jnp.int32),
      frames=jnp.zeros((1, d.num_frames, d.image_size, d.image_size, 3), jnp.float32))


def abstract_params(m: VideoLLM, config, mesh, rules):
  """Shapes and shardings of every param, without allocating any."""
  boxed = jax.eval_shape(
      lambda: m.init({"params": jax.random.key(0), "noise": jax.random.key(1)},
                     **dummy_inputs(config)))
  shardings = mesh_lib.logical_shardings(boxed, mesh, rules)["params"]
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          trees.strip_boxes(boxed)["params"], shardings)
  return abstract, shardings


def _visual_path(mdl: VideoLLM, input_ids, attention_mask, frames):
  """Touches encoder, reducer and projector only: initialising through it never traces the LLM."""
  del input_ids, attention_mask
  return mdl.visual_embeds(mdl.features(frames))


def random_params(m: VideoLLM, config, groups: list[str], shardings) -> dict:
  """Random init of `groups` only, created already sharded (without "llm", the LLM is never
  traced, so a big pretrained LLM costs nothing here)."""
  inputs = dummy_inputs(config)
  method = None if "llm" in groups else _visual_path

  def init():
    v = m.init({"params": jax.random.key(config.seed), "noise": jax.random.key(1)}, **inputs,
               method=method)
    return {g: nn.unbox(v)["params"][g] for g in groups}

  return jax.jit(init, out_shardings={g: shardings[g] for g in groups})()


def fit_params(group: str, params: Mapping, abstract: Mapping, where: str) -> dict:
  """Pretrained `params` cast to the dtypes of `abstract`, after a check naming every mismatch.

  LLM layers are stacked or unstacked to the model's layout. LLM vocabularies may be longer
  than the model's: an export appends rows for the `<video>`
  placeholder, which the model never embeds, so trailing rows are dropped."""
  if group == "llm":  # per-layer (checkpoints) or stacked (scan_layers): whichever the model has
    params = (llm_lib.stack_layers(params) if "layers" in abstract
              else llm_lib.unstack_layers(params))
  got = traverse_util.flatten_dict(dict(params), sep="/")
  want = traverse_util.flatten_dict(dict(abstract), sep="/")
  if group == "llm":
    for k, axis in (("embed_tokens/embedding", 0), ("lm_head/kernel", 1)):
      if k in got and k in want and np.shape(got[k])[axis] > want[k].shape[axis]:
        got[k] = np.take(np.asarray(got[k]), np.arange(want[k].shape[axis]), axis=axis)
  trees.check_fit(got, want, f"{group} weights from {where}", limit=8)
  return traverse_util.unflatten_dict(
      {k: np.asarray(v).astype(want[k].dtype) for k, v in got.items()}, sep="/")
