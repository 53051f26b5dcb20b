"""Build the multimodal model, its tokenizer and its initial params from `config.model`."""

from __future__ import annotations

import dataclasses
import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax.models import encoders as encoders_lib
from longvid_jax.models import reducers as reducers_lib
from longvid_jax.models.llm import DecoderLM, LLMConfig
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.models.projector import MLPProjector
from longvid_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)


def tokenizer(cfg):
  from longvid_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.load(cfg.tokenizer, add_video_token=True)


def encoder(cfg) -> nn.Module:
  return encoders_lib.build(cfg.encoder.name, cfg.encoder.get("preset"),
                            **dict(cfg.encoder.get("args") or {}))


@functools.lru_cache(maxsize=2)
def _pretrained_llm(source: str):
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  log.info("loading LLM weights from %s", source)
  params, llm_cfg, _ = hf.import_llm(source, tokenizer=False)
  return params, llm_cfg


def llm_config(cfg) -> LLMConfig:
  """From the checkpoint when `llm.weights` names one (`llm.args` may override e.g. dtype)."""
  args = dict(cfg.llm.get("args") or {})
  if cfg.llm.get("weights"):
    return dataclasses.replace(_pretrained_llm(cfg.llm.weights)[1], **args)
  return LLMConfig(**args)


def model(cfg, tok) -> VideoLLM:
  llm_cfg = llm_config(cfg)
  reducer = reducers_lib.REDUCERS.get(cfg.reducer.name)(**dict(cfg.reducer.get("args") or {}))
  return VideoLLM(
      encoder=encoder(cfg), reducer=reducer,
      projector=MLPProjector(llm_cfg.hidden_size, depth=cfg.projector.depth),
      llm=DecoderLM(llm_cfg), video_token_id=tok.video_token_id,
      train_encoder=bool(cfg.train_encoder))


def num_visual_tokens(m: VideoLLM, config) -> int:
  h, w = m.encoder.grid
  return m.reducer.num_tokens(config.data.num_frames, h, w)


def dummy_inputs(config, num_visual: int) -> dict:
  d = config.data
  return dict(
      input_ids=jnp.zeros((1, d.seq_len), jnp.int32),
      attention_mask=jnp.ones((1, d.seq_len), jnp.int32),
      frames=jnp.zeros((1, d.num_frames, d.image_size, d.image_size, 3), jnp.float32))


def strip_boxes(tree):
  """Drop the logical-axis boxes without applying sharding constraints (safe outside jit)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                      if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def abstract_params(m: VideoLLM, config, num_visual: int, mesh, rules):
  """Shapes and shardings of every param, without allocating any."""
  inputs = dummy_inputs(config, num_visual)
  boxed = jax.eval_shape(
      lambda: m.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, **inputs))
  shardings = mesh_lib.logical_shardings(boxed, mesh, rules)["params"]
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          strip_boxes(boxed)["params"], shardings)
  return abstract, shardings


def init_params(m: VideoLLM, config, num_visual: int, abstract, shardings):
  """Random init, created already sharded, then pretrained weights where the config names them."""
  inputs = dummy_inputs(config, num_visual)

  def init():
    v = m.init({"params": jax.random.key(config.seed), "noise": jax.random.key(1)}, **inputs)
    return nn.unbox(v)["params"]

  params = jax.jit(init, out_shardings=shardings)()
  if config.model.llm.get("weights"):
    pretrained, _ = _pretrained_llm(config.model.llm.weights)
    params["llm"] = jax.device_put(
        jax.tree.map(lambda p, a: np.asarray(p, a.dtype), pretrained, abstract["llm"]),
        shardings["llm"])
  return params
