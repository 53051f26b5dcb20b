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
import logging
import os
import pathlib
from typing import Any

import jax
import ml_collections

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.interop import compressor as compressor_lib
from longvid_jax.interop import hf
from longvid_jax.interop import vision as vision_lib
from longvid_jax.models import build
from longvid_jax.train import checkpoint

log = logging.getLogger(__name__)

CONFIG_FILE = "longvid.json"


# --- a run in memory -----------------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
  config: ml_collections.ConfigDict
  tokenizer: Any
  model: Any  # VideoLLM
  params: dict  # host numpy arrays, stored dtypes


def load(checkpoint: str | os.PathLike) -> Loaded:
  """Config, tokenizer, model and params of a checkpoint, gathered to host memory."""
  run = runs.open_run(checkpoint)
  s = runs.setup(run.config, mesh=runs.single_device_mesh())
  return Loaded(run.config, s.tokenizer, s.model, jax.device_get(s.load_params(run.params_dir)))


# --- export ---------------------------------------------------------------------------------------

def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Write OUT/llm, OUT/vision, OUT/compressor and OUT/longvid.json (see the module doc)."""
  return export_loaded(load(checkpoint), out_dir)


def export_loaded(loaded: Loaded, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """`export_hf` for a model already in memory (host or device arrays; gathered here)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  m, params, tok = loaded.model, jax.device_get(loaded.params), loaded.tokenizer
  llm_params, llm_cfg = params["llm"], m.llm.cfg
  if tok.vocab_size > llm_cfg.vocab_size:  # give <video> (and any other added token) a row
    llm_params, llm_cfg = hf.resize_vocab(llm_params, llm_cfg, tok.vocab_size)
  paths = {"llm": hf.export_llm(llm_params, llm_cfg, out / "llm", tokenizer=tok)}
  if params.get("encoder"):
    paths["vision"] = vision_lib.save_pretrained(loaded.config.model.encoder.name,
                                               params["encoder"], m.encoder.cfg, out / "vision")
  mc = loaded.config.model
  paths["compressor"] = compressor_lib.write_compressor(
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
  src = pathlib.Path(export_dir).expanduser() if export_dir else None
  if src is not None and not src.is_dir():
    raise FileNotFoundError(f"export directory {src} does not exist")
  if config is None:
    if src is None or not (src / CONFIG_FILE).is_file():
      raise FileNotFoundError("no config: pass --config, or an export directory holding "
                              f"{CONFIG_FILE}")
    config = config_lib.from_json(src / CONFIG_FILE)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.init_from = None

  def part(given, name):
    if given:
      return pathlib.Path(given).expanduser()
    return src / name if src is not None and (src / name).is_dir() else None

  llm, vision, compressor = part(llm, "llm"), part(vision, "vision"), part(compressor, "compressor")
  s = runs.setup(config, mesh=runs.single_device_mesh())
  given: dict[str, Any] = {}
  where: dict[str, str] = {}
  if llm is not None:
    given["llm"] = hf.import_llm(str(llm), tokenizer=False)[0]
    where["llm"] = str(llm)
  if vision is not None:
    given["encoder"] = vision_lib.load_pretrained(config.model.encoder.name, str(vision),
                                                  s.model.encoder.cfg)[0]
    where["encoder"] = str(vision)
  if compressor is not None:
    parts, _ = compressor_lib.read_compressor(compressor)
    given.update(parts)
    where.update({g: str(compressor) for g in parts})
  if not given:
    raise ValueError("nothing to import: pass an export directory or --llm / --vision / "
                     "--compressor")
  abstract = s.abstract
  for g in list(given):
    if g not in abstract:
      raise ValueError(f"{where[g]} has {g} weights but this config's model has no {g} params")
    given[g] = build.fit_params(g, given[g], abstract[g], where[g])
  params = s.init_params(pretrained=given)
  out = pathlib.Path(out_ckpt).expanduser().absolute()
  out.mkdir(parents=True, exist_ok=True)
  checkpoint.save_params(out / "params", params)
  (out / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  for g in abstract:
    log.info("%s: %s", g, where.get(g) or ("config weights" if config.model[g].weights
                                           else "random init"))
  return out
