"""Everything a command needs before it computes: `setup(config)` and `open_run(path)`.

`setup` turns a config into the tokenizer, the model, the mesh and rules, and (traced when first
asked for) the shapes and shardings of every param; training, evaluation, export and the tools
all start here. A part whose config names `weights` takes its shapes from that checkpoint.
`open_run` finds a run's config and final params from a workdir (moved or not), a `longvid
import` output, or a params folder inside either.

Initial params come, per group (encoder, reducer, projector, llm), from the checkpoint
`model.init_from` names (every group at once), the checkpoint a group's own `weights` names, or
random init for the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from longvid_jax import config as config_lib
from longvid_jax.data import descriptors, features, tokenizers
from longvid_jax.interop import compressor as compressor_lib
from longvid_jax.interop import hf, vision
from longvid_jax.models import build
from longvid_jax.models import llm as llm_lib
from longvid_jax.models.llm import LLMConfig
from longvid_jax.models.mllm import VideoLLM
from longvid_jax.parallel import mesh as mesh_lib
from longvid_jax.train import checkpoint

log = logging.getLogger(__name__)


# --- pretrained parts ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _pretrained_encoder(name: str, source: str, cfg):
  log.info("loading %s encoder weights from %s", name, source)
  return vision.load_pretrained(name, source, cfg)


@functools.lru_cache(maxsize=2)
def _pretrained_llm(source: str):
  log.info("loading LLM weights from %s", source)
  params, llm_cfg, _ = hf.import_llm(source, tokenizer=False)
  return params, llm_cfg


@functools.lru_cache(maxsize=2)
def _pretrained_compressor(source: str):
  log.info("loading reducer / projector weights from %s", source)
  return compressor_lib.read_compressor(source)[0]


def tokenizer(mcfg):
  return tokenizers.load(mcfg.tokenizer, add_video_token=True)


def encoder_config(mcfg):
  """The encoder's config dataclass; a checkpoint named by `encoder.weights` may fix shapes."""
  enc = build.encoder_config(mcfg)
  if mcfg.encoder.weights:
    enc = vision.pretrained_config(mcfg.encoder.name, str(mcfg.encoder.weights), enc)
  return enc


def llm_config(mcfg) -> LLMConfig:
  """From the checkpoint when `llm.weights` names one (`llm.args` may override e.g. dtype),
  cut to its first `llm.layers` layers when that is set."""
  args = dict(mcfg.llm.args or {})
  if mcfg.llm.weights:  # the checkpoint's config alone: its weights load only when needed
    cfg = dataclasses.replace(_llm_config(str(mcfg.llm.weights)), **args)
  else:
    cfg = LLMConfig(**args)
  return truncated(cfg, mcfg.llm.get("layers"))


def truncated(cfg: LLMConfig, layers: int | None) -> LLMConfig:
  """`cfg` with only its first `layers` decoder layers (None: all of them)."""
  if layers is None or layers == cfg.num_layers:
    return cfg
  if not 1 <= layers <= cfg.num_layers:
    raise ValueError(f"model.llm.layers={layers} must lie in 1..{cfg.num_layers} (the LLM's "
                     "layer count); set it to None to keep every layer")
  return dataclasses.replace(cfg, num_layers=int(layers),
                             layer_types=tuple(cfg.layer_types[:layers]))


def first_layers(params: Mapping, layers: int | None) -> dict:
  """LLM params (per-layer layout) without the layers after the first `layers`."""
  if layers is None:
    return dict(params)
  return {k: v for k, v in params.items()
          if not k.startswith("layers_") or int(k.split("_")[1]) < layers}


@functools.lru_cache(maxsize=4)
def _llm_config(source: str) -> LLMConfig:
  return hf.llm_config(source)


def pretrained_loaders(mcfg) -> dict[str, Callable[[], Mapping]]:
  """Group name → loader of its params, for every group whose config names `weights`.

  encoder: what its converter in `interop/vision.py` reads (asset name, file, HF directory);
  llm: anything `interop.hf.import_llm` reads; reducer / projector: an exported compressor
  directory (`longvid export ... OUT` writes OUT/compressor).
  """
  out: dict[str, Callable[[], Mapping]] = {}
  if mcfg.encoder.weights:
    name, enc = mcfg.encoder.name, build.encoder_config(mcfg)
    out["encoder"] = lambda: _pretrained_encoder(name, str(mcfg.encoder.weights), enc)[0]
  for group in ("reducer", "projector"):
    if mcfg[group].weights:
      out[group] = functools.partial(lambda g, src: _pretrained_compressor(src)[g], group,
                                     str(mcfg[group].weights))
  if mcfg.llm.weights:
    out["llm"] = lambda: llm_lib.to_layout(
        first_layers(_pretrained_llm(mcfg.llm.weights)[0], mcfg.llm.get("layers")),
        llm_config(mcfg))
  return out


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


# --- setup ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """A config made concrete; `scope()` is the mesh + axis-rules context every call runs in."""
  config: ml_collections.ConfigDict
  tokenizer: Any  # None when built with_tokenizer=False (shape-only tools)
  model: VideoLLM
  num_visual: int
  mesh: jax.sharding.Mesh
  rules: tuple

  @functools.cached_property
  def _plan(self) -> tuple[dict, dict]:
    """Traced on first use (seconds for a big model): a run's own params need no tracing."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return build.abstract_params(self.model, self.config, self.mesh, self.rules)

  @property
  def abstract(self) -> dict:
    """ShapeDtypeStructs with shardings, no memory."""
    return self._plan[0]

  @property
  def shardings(self) -> dict:
    return self._plan[1]

  def scope(self) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def load_params(self, path: str | pathlib.Path, as_saved: bool = False) -> dict:
    """Params of `path` placed as this model shards them. `as_saved` on one device takes the
    shapes from the checkpoint instead of tracing the model (for a run's own params, which fit
    by construction): `ask` starts seconds sooner."""
    with self.scope():
      if as_saved and self.mesh.devices.size == 1:
        return checkpoint.load_params_as_saved(
            pathlib.Path(path), jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
      return checkpoint.load_params(pathlib.Path(path), self.abstract)

  def encoder_fingerprint(self, params: dict) -> str:
    """What keys encoder-derived caches (features, descriptors): its definition and weights."""
    e = self.config.model.encoder
    return features.encoder_fingerprint(e.name, e.preset, dict(e.args or {}),
                                        jax.device_get(params["encoder"]))

  def encoder_fn(self, params: dict, pool: bool = False):
    """frames[T,S,S,3] in [0,1] → this model's encoder features[T,h,w,C] (what the feature
    cache stores for one video), or with `pool` their mean over space, [T,C]."""
    enc = {"encoder": params["encoder"]}

    def features(p, x):
      f = self.model.apply({"params": p}, x[None], method=VideoLLM.features)[0]
      return f.mean(axis=(1, 2)) if pool else f

    apply = jax.jit(features)

    def encode(frames):
      with self.scope():  # pipeline threads enter the mesh themselves
        return jax.device_get(apply(enc, jnp.asarray(frames)))

    return encode

  def describer(self, params: dict, batch: int = 16) -> descriptors.Describer:
    """The frame descriptors the content samplers (fila, longvu) choose by: this model's encoder
    tokens, mean-pooled over space (`data/descriptors.py`)."""
    # its own copy: training steps donate (and so delete) the buffers of the params they update
    enc = {"encoder": jax.tree.map(lambda x: jnp.array(x, copy=True), params["encoder"])}
    return descriptors.Describer(self.encoder_fn(enc, pool=True), self.encoder_fingerprint(enc),
                                 int(self.config.data.image_size), batch)

  def init_params(self, pretrained: Mapping[str, Mapping] | None = None) -> dict:
    """Every param, created already sharded: all of them from `model.init_from` when it is set;
    otherwise `pretrained` groups as given, groups whose config names `weights` from there, and
    only the remaining groups initialised randomly (so a big pretrained LLM is never traced)."""
    config, abstract = self.config, self.abstract
    if config.model.init_from:
      path = init_from_dir(config.model.init_from)
      log.info("initialising every param from %s", path)
      try:
        return self.load_params(path)
      except (ValueError, KeyError) as e:
        raise ValueError(f"model.init_from={path} does not fit the model this config builds "
                         f"({e})") from None
    given: dict[str, Any] = dict(pretrained or {})
    for group, load in pretrained_loaders(config.model).items():
      if group in abstract and group not in given:
        given[group] = load()
    params = {}
    with self.scope():
      rest = [g for g in abstract if g not in given]
      if rest:
        params.update(build.random_params(self.model, config, rest, self.shardings))
      for group in abstract:
        if group in given:
          where = str(config.model[group].weights or "the given checkpoint")
          fitted = build.fit_params(group, given[group], abstract[group], where)
          params[group] = jax.device_put(fitted, self.shardings[group])
    return {g: params[g] for g in abstract}


def single_device_mesh() -> jax.sharding.Mesh:
  return mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


def setup(config, mesh: jax.sharding.Mesh | Mapping[str, int] | None = None,
          with_tokenizer: bool = True) -> Setup:
  """The tokenizer, model, mesh (default `config.mesh`), rules and abstract params of `config`.
  Without a tokenizer (shape-only tools), `<video>` takes the id after the LLM's vocabulary."""
  mcfg = config.model
  tok = tokenizer(mcfg) if with_tokenizer else None
  llm_cfg = llm_config(mcfg)
  video_id = tok.video_token_id if tok is not None else llm_cfg.vocab_size
  if tok is not None:  # the placeholder is never embedded, so it may lie past the table
    ids = tok.vocab_size - (video_id == tok.vocab_size - 1)
    if ids > llm_cfg.vocab_size:
      raise ValueError(f"model.tokenizer ({mcfg.tokenizer}) has {ids} ids but the LLM embeds "
                       f"{llm_cfg.vocab_size}; set model.llm.args.vocab_size>={ids}, or a "
                       "model.llm.weights checkpoint made for this tokenizer")
  model = build.model(mcfg, video_id, encoder_config(mcfg), llm_cfg)
  if not isinstance(mesh, jax.sharding.Mesh):
    mesh = mesh_lib.make_mesh(dict(config.mesh) if mesh is None else dict(mesh))
  rules = mesh_lib.rules_from_config(config.sharding_rules)
  return Setup(config, tok, model, build.num_visual_tokens(model, config), mesh, rules)


# --- finished runs -------------------------------------------------------------------------------


LLM_CONFIG = "llm_config.json"  # a run's resolved LLMConfig, written when training starts


def _run_config(root: pathlib.Path) -> ml_collections.ConfigDict:
  """root/config.json, with the LLM's shape from the run's own llm_config.json when it has one:
  the run's params hold the LLM, so opening it needs no look at (or download of) the checkpoint
  it started from."""
  config = config_lib.from_json(root / "config.json")
  f = root / LLM_CONFIG
  if f.is_file():
    config.model.llm.weights = None
    config.model.llm.args = json.loads(f.read_text())
  return config


@dataclasses.dataclass(frozen=True)
class Run:
  root: pathlib.Path  # the workdir (or `longvid import` output) holding config.json
  config: ml_collections.ConfigDict
  params_dir: pathlib.Path  # Orbax params: the run's final ones, or the folder given


def open_run(path: str | pathlib.Path) -> Run:
  """A run workdir (config.json + summary.json; moved since the run is fine), a directory
  `longvid import` wrote (config.json + params/), or a params folder inside either."""
  p = pathlib.Path(path).expanduser().absolute()
  if not p.is_dir():
    raise FileNotFoundError(f"checkpoint {p} does not exist (pass a run workdir or a params "
                            "directory inside one)")
  if (p / "config.json").is_file():
    if (p / "summary.json").is_file():
      final = pathlib.Path(json.loads((p / "summary.json").read_text())["final_params"])
      if not final.is_absolute():
        final = p / final
      if not final.is_dir():  # the workdir moved since the run: same layout, new root
        final = p / final.parent.name / final.name
      return Run(p, _run_config(p), final)
    if (p / "params").is_dir():
      return Run(p, _run_config(p), p / "params")
    raise FileNotFoundError(f"{p} has no summary.json; the run has not finished a stage list")
  for up in p.parents:
    if (up / "config.json").is_file():
      return Run(up, _run_config(up), p)
  raise FileNotFoundError(f"no config.json for {p}: expected a run workdir (config.json + "
                          "summary.json), a `longvid import` output, or a params directory "
                          "inside one of them")
