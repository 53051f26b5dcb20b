"""Build the multimodal model, its tokenizer and its initial params from `config.model`.

Initial params come from one of three places, per parameter group (encoder, reducer, projector,
llm): the checkpoint `model.init_from` names (every group at once), the checkpoint a group's own
`weights` field names, or random init for the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longvid_jax.models import encoders as encoders_lib
from longvid_jax.models import reducers as reducers_lib
from longvid_jax.models import llm as llm_lib
from longvid_jax.models.llm import DecoderLM, LLMConfig
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.models.projector import MLPProjector
from longvid_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)


def tokenizer(cfg):
  from longvid_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.load(cfg.tokenizer, add_video_token=True)


@functools.lru_cache(maxsize=2)
def _pretrained_encoder(name: str, source: str, cfg):
  log.info("loading %s encoder weights from %s", name, source)
  return encoders_lib.load_pretrained(name, source, cfg)


def _encoder_args(cfg):
  return cfg.encoder.name, cfg.encoder.get("preset"), dict(cfg.encoder.get("args") or {})


def encoder_config(cfg):
  """The encoder's config dataclass; a checkpoint named by `encoder.weights` may fix shapes."""
  name, preset, args = _encoder_args(cfg)
  enc = encoders_lib.config(name, preset, **args)
  if cfg.encoder.get("weights"):
    enc = _pretrained_encoder(name, str(cfg.encoder.weights), enc)[1]
  return enc


def encoder(cfg) -> nn.Module:
  return encoders_lib.ENCODERS.get(cfg.encoder.name)(encoder_config(cfg))


@functools.lru_cache(maxsize=2)
def _pretrained_llm(source: str):
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  log.info("loading LLM weights from %s", source)
  params, llm_cfg, _ = hf.import_llm(source, tokenizer=False)
  return params, llm_cfg


@functools.lru_cache(maxsize=2)
def _pretrained_compressor(source: str):
  from longvid_jax.interop import export  # pylint: disable=g-import-not-at-top
  log.info("loading reducer / projector weights from %s", source)
  return export.read_compressor(source)[0]


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
      projector=MLPProjector(llm_cfg.hidden_size, depth=cfg.projector.depth,
                             norm=bool(cfg.projector.get("norm", False))),
      llm=DecoderLM(llm_cfg), video_token_id=tok.video_token_id,
      train_encoder=bool(cfg.train_encoder))


def pretrained_loaders(cfg) -> dict[str, Callable[[], Mapping]]:
  """Group name → loader of its params, for every group whose config names `weights`.

  encoder: whatever its class's `load_pretrained` reads (asset name, file, HF directory);
  llm: anything `interop.hf.import_llm` reads; reducer / projector: an exported compressor
  directory (`longvid export ... OUT` writes OUT/compressor).
  """
  out: dict[str, Callable[[], Mapping]] = {}
  if cfg.encoder.get("weights"):
    name, preset, args = _encoder_args(cfg)
    enc = encoders_lib.config(name, preset, **args)
    out["encoder"] = lambda: _pretrained_encoder(name, str(cfg.encoder.weights), enc)[0]
  for group in ("reducer", "projector"):
    if cfg[group].get("weights"):
      out[group] = functools.partial(lambda g, src: _pretrained_compressor(src)[g], group,
                                     str(cfg[group].weights))
  if cfg.llm.get("weights"):
    out["llm"] = lambda: llm_lib.to_layout(_pretrained_llm(cfg.llm.weights)[0], llm_config(cfg))
  return out


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


def _visual_path(mdl: VideoLLM, input_ids, attention_mask, frames):
  """Touches encoder, reducer and projector only: initialising through it never traces the LLM."""
  del input_ids, attention_mask
  return mdl.visual_embeds(mdl.features(frames))


def fit_params(group: str, params: Mapping, abstract: Mapping, where: str) -> dict:
  """Pretrained `params` cast to the dtypes of `abstract`, after a check naming every mismatch.

  LLM layers are stacked or unstacked to the model's layout. LLM vocabularies may be longer
  than the model's: an export appends rows for the `<video>`
  placeholder, which the model never embeds, so trailing rows are dropped."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  if group == "llm":  # per-layer (checkpoints) or stacked (scan_layers): whichever the model has
    params = (llm_lib.stack_layers(params) if "layers" in abstract
              else llm_lib.unstack_layers(params))
  got = traverse_util.flatten_dict(dict(params), sep="/")
  want = traverse_util.flatten_dict(dict(abstract), sep="/")
  if group == "llm":
    for k, axis in (("embed_tokens/embedding", 0), ("lm_head/kernel", 1)):
      if k in got and k in want and np.shape(got[k])[axis] > want[k].shape[axis]:
        got[k] = np.take(np.asarray(got[k]), np.arange(want[k].shape[axis]), axis=axis)
  problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
  problems += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
  problems += [f"{k}: shape {tuple(np.shape(got[k]))}, model needs {tuple(want[k].shape)}"
               for k in sorted(want.keys() & got.keys())
               if tuple(np.shape(got[k])) != tuple(want[k].shape)]
  if problems:
    raise ValueError(f"{group} weights from {where} do not fit the model: "
                     + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
  return traverse_util.unflatten_dict(
      {k: np.asarray(v).astype(want[k].dtype) for k, v in got.items()}, sep="/")


def init_from_dir(path: str | pathlib.Path) -> pathlib.Path:
  """The Orbax params directory of `model.init_from`: a directory written by `longvid import`
  (holding `params/`) or a params directory itself (e.g. a finished run's `4_sft/params`)."""
  p = pathlib.Path(path).expanduser()
  if (p / "params").is_dir():
    p = p / "params"
  if not p.is_dir():
    raise FileNotFoundError(f"model.init_from={str(path)!r} is not a params checkpoint directory "
                            "(write one with `longvid import`, or name a run's <i>_<stage>/params)")
  return p.absolute()


def init_params(m: VideoLLM, config, num_visual: int, abstract, shardings,
                pretrained: Mapping[str, Mapping] | None = None):
  """Every param, created already sharded: all of them from `model.init_from` when it is set;
  otherwise `pretrained` groups as given, groups whose config names `weights` from there, and
  only the remaining groups initialised randomly (so a big pretrained LLM is never traced)."""
  if config.model.get("init_from"):
    from longvid_jax.train import stage as stage_lib  # pylint: disable=g-import-not-at-top
    path = init_from_dir(config.model.init_from)
    log.info("initialising every param from %s", path)
    try:
      return stage_lib.load_params(path, abstract)
    except (ValueError, KeyError) as e:
      raise ValueError(f"model.init_from={path} does not fit the model this config builds "
                       f"({e})") from None
  given: dict[str, Any] = dict(pretrained or {})
  for group, load in pretrained_loaders(config.model).items():
    if group in abstract and group not in given:
      given[group] = load()
  params = {}
  rest = [g for g in abstract if g not in given]
  if rest:
    inputs = dummy_inputs(config, num_visual)
    method = None if "llm" in rest else _visual_path

    def init():
      v = m.init({"params": jax.random.key(config.seed), "noise": jax.random.key(1)}, **inputs,
                 method=method)
      return {g: nn.unbox(v)["params"][g] for g in rest}

    params.update(jax.jit(init, out_shardings={g: shardings[g] for g in rest})())
  for group in abstract:
    if group in given:
      fitted = fit_params(group, given[group], abstract[group], where=_weights_name(config, group))
      params[group] = jax.device_put(fitted, shardings[group])
  return {g: params[g] for g in abstract}


def _weights_name(config, group: str) -> str:
  return str(config.model[group].get("weights") or "the given checkpoint")
