"""A trained multimodal model as parts PyTorch reads, and back.

`export_hf(checkpoint, out)` writes

  OUT/llm/         causal LM for transformers (Qwen2ForCausalLM / LlamaForCausalLM) with its
                   tokenizer; the vocabulary includes the `<video>` placeholder
  OUT/vision/      the vision tower: a SiglipVisionModel directory, or EfficientNet-Lite0 weights
                   in efficientnet_pytorch names plus a config.json
  OUT/compressor/  reducer + projector: model.safetensors + config.json, which
                   `interop.torch_compressor.Compressor` runs
  OUT/longvid.json the run's config, so `import_hf` rebuilds the same model

`import_hf(...)` reads such parts (or separately given LLM / SigLIP directories) into our params
and writes a params checkpoint that `model.init_from` starts a run from. Tensors keep their
dtypes both ways (bf16 stays bf16), so export → import reproduces every tensor exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from longvid_jax.interop import tables
from longvid_jax.interop.tables import Rule

log = logging.getLogger(__name__)

COMPRESSOR_FORMAT = "longvid_compressor"
CONFIG_FILE = "longvid.json"


# --- configs and checkpoints ----------------------------------------------------------------------

def _tuples(x: Any) -> Any:
  """JSON turned every tuple into a list; configs use tuples (recipe, strides, trainable)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def config_from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """A config as the runner writes it (workdir/config.json)."""
  path = pathlib.Path(path)
  try:
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not a readable config ({e})") from None


def locate(checkpoint: str | os.PathLike) -> tuple[ml_collections.ConfigDict, pathlib.Path]:
  """(config, Orbax params directory) of a run workdir, a directory `import_hf` wrote, or a
  params directory inside either (its config.json is one or two levels up)."""
  p = pathlib.Path(checkpoint).expanduser().absolute()
  if not p.is_dir():
    raise FileNotFoundError(f"checkpoint {p} does not exist (pass a run workdir or a params "
                            "directory inside one)")
  if (p / "summary.json").is_file():
    final = pathlib.Path(json.loads((p / "summary.json").read_text())["final_params"])
    if not final.is_dir():  # the workdir moved since the run: same layout, new root
      final = p / final.parent.name / final.name
    return config_from_json(p / "config.json"), final
  if (p / "config.json").is_file() and (p / "params").is_dir():
    return config_from_json(p / "config.json"), p / "params"
  for up in (p.parent, p.parent.parent):
    if (up / "config.json").is_file():
      return config_from_json(up / "config.json"), p
  raise FileNotFoundError(f"no config.json for {p}: expected a run workdir (config.json + "
                          "summary.json), a `longvid import` output, or a params directory "
                          "inside one of them")


@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  tokenizer: Any
  model: Any  # VideoLLM
  params: dict  # host numpy arrays, stored dtypes


def _unsharded_abstract(m, config, num_visual: int) -> dict:
  from longvid_jax.models import build  # pylint: disable=g-import-not-at-top
  inputs = build.dummy_inputs(config, num_visual)
  boxed = jax.eval_shape(
      lambda: m.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, **inputs))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
                      build.strip_boxes(boxed)["params"])


def load(checkpoint: str | os.PathLike) -> Loaded:
  """Config, tokenizer, model and params of a checkpoint, gathered to host memory."""
  from longvid_jax.models import build  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import stage as stage_lib  # pylint: disable=g-import-not-at-top
  config, params_dir = locate(checkpoint)
  tok = build.tokenizer(config.model)
  m = build.model(config.model, tok)
  abstract = _unsharded_abstract(m, config, build.num_visual_tokens(m, config))
  params = jax.device_get(stage_lib.load_params(params_dir, abstract))
  return Loaded(config, tok, m, params)


# --- the compressor (reducer + projector) ---------------------------------------------------------

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
  config.json). The SVC is written in `torch_compressor` layout; other reducers in ours."""
  from longvid_jax.models.reducers import svc  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors: dict[str, np.ndarray] = {}
  layout = "torch" if reducer_name == "svc" else "flax"
  red = dict(params.get("reducer") or {})
  if red:
    rules = svc_rules() if layout == "torch" else _flat_rules("reducer.", red)
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
  if reducer_name == "svc":
    config["reducer"]["block_strides"] = [list(s) for s in svc.block_strides(reducer.strides)]
    config["reducer"]["layer_norm_eps"] = 1e-6
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(out / "model.safetensors"), metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
  return out


def _tuples_to_lists(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _tuples_to_lists(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_tuples_to_lists(v) for v in x]
  return x


def _read_stored(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of a safetensors file in its stored dtype (bf16 as ml_dtypes' bfloat16)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  with safe_open(str(path), framework="flax") as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k))
  return out


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
  tensors = _read_stored(weights)
  red = {k: v for k, v in tensors.items() if k.startswith("reducer.")}
  proj = {k: v for k, v in tensors.items() if k.startswith("projector.")}
  out = {"projector": tables.to_ours(proj, projector_rules(
      bool(config.get("projector", {}).get("norm", False))))}
  if red:
    if config["layout"] == "torch":
      out["reducer"] = tables.to_ours(red, svc_rules())
    else:
      out["reducer"] = traverse_util.unflatten_dict(
          {k[len("reducer."):].replace(".", "/"): v for k, v in red.items()}, sep="/")
  return out, config


# --- export ---------------------------------------------------------------------------------------

def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Write OUT/llm, OUT/vision, OUT/compressor and OUT/longvid.json (see the module doc)."""
  return export_loaded(load(checkpoint), out_dir)


def export_loaded(loaded: Loaded, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """`export_hf` for a model already in memory (host or device arrays; gathered here)."""
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  m, params, tok = loaded.model, jax.device_get(loaded.params), loaded.tokenizer
  llm_params, llm_cfg = params["llm"], m.llm.cfg
  if tok.vocab_size > llm_cfg.vocab_size:  # give <video> (and any other added token) a row
    llm_params, llm_cfg = hf.resize_vocab(llm_params, llm_cfg, tok.vocab_size)
  paths = {"llm": hf.export_llm(llm_params, llm_cfg, out / "llm", tokenizer=tok)}
  if params.get("encoder"):
    paths["vision"] = m.encoder.save_pretrained(params["encoder"], out / "vision")
  mc = loaded.config.model
  paths["compressor"] = write_compressor(
      m.reducer, mc.reducer.name, params, out / "compressor", width=m.encoder.width,
      llm_width=llm_cfg.hidden_size, projector_depth=int(mc.projector.depth))
  (out / CONFIG_FILE).write_text(loaded.config.to_json_best_effort(indent=2) + "\n")
  paths["config"] = out / CONFIG_FILE
  return paths


# --- import ---------------------------------------------------------------------------------------

def import_hf(out_ckpt: str | os.PathLike, export_dir: str | os.PathLike | None = None,
              config: ml_collections.ConfigDict | None = None, llm: str | None = None,
              vision: str | None = None, compressor: str | None = None) -> pathlib.Path:
  """Build our params from exported parts and write OUT_CKPT/params (Orbax) + config.json.

  Parts come from `export_dir` (its llm/, vision/, compressor/) unless given one by one; the
  model is the one `config` builds (default: the export's longvid.json). Groups no part covers
  start as the config says (their `weights`, else random). LLM vocabularies longer than the
  model's lose the trailing rows an export added for `<video>`.
  """
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  from longvid_jax.models import build  # pylint: disable=g-import-not-at-top
  from longvid_jax.models import encoders as encoders_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import stage as stage_lib  # pylint: disable=g-import-not-at-top
  src = pathlib.Path(export_dir).expanduser() if export_dir else None
  if src is not None and not src.is_dir():
    raise FileNotFoundError(f"export directory {src} does not exist")
  if config is None:
    if src is None or not (src / CONFIG_FILE).is_file():
      raise FileNotFoundError("no config: pass --config, or an export directory holding "
                              f"{CONFIG_FILE}")
    config = config_from_json(src / CONFIG_FILE)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.init_from = None

  def part(given, name):
    if given:
      return pathlib.Path(given).expanduser()
    return src / name if src is not None and (src / name).is_dir() else None

  llm, vision, compressor = part(llm, "llm"), part(vision, "vision"), part(compressor, "compressor")
  tok = build.tokenizer(config.model)
  m = build.model(config.model, tok)
  given: dict[str, Any] = {}
  where: dict[str, str] = {}
  if llm is not None:
    given["llm"] = hf.import_llm(str(llm), tokenizer=False)[0]
    where["llm"] = str(llm)
  if vision is not None:
    given["encoder"] = encoders_lib.load_pretrained(config.model.encoder.name, str(vision),
                                                    m.encoder.cfg)[0]
    where["encoder"] = str(vision)
  if compressor is not None:
    parts, _ = read_compressor(compressor)
    given.update(parts)
    where.update({g: str(compressor) for g in parts})
  if not given:
    raise ValueError("nothing to import: pass an export directory or --llm / --vision / "
                     "--compressor")
  num_visual = build.num_visual_tokens(m, config)
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  rules = mesh_lib.rules_from_config(config.get("sharding_rules"))
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = build.abstract_params(m, config, num_visual, mesh, rules)
    for g in list(given):
      if g not in abstract:
        raise ValueError(f"{where[g]} has {g} weights but this config's model has no {g} params")
      given[g] = build.fit_params(g, given[g], abstract[g], where[g])
    params = build.init_params(m, config, num_visual, abstract, shardings, pretrained=given)
  out = pathlib.Path(out_ckpt).expanduser().absolute()
  out.mkdir(parents=True, exist_ok=True)
  stage_lib.save_params(out / "params", params)
  (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  for g in abstract:
    log.info("%s: %s", g, where.get(g) or ("config weights" if config.model[g].get("weights")
                                           else "random init"))
  return out
