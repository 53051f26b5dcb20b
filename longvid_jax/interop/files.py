"""Checkpoint files every converter shares: where a model lives (a local path or a hub id) and
safetensors reading and writing, so each format module only says how names and shapes map."""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Mapping

import numpy as np

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")


def _looks_like_hub_id(source: str) -> bool:
  return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not source.startswith(".")


def model_dir(source: str | os.PathLike) -> pathlib.Path:
  """A local file or directory as it is; an `org/name` hub id fetched with huggingface_hub (or
  read from its cache), failing in one line when neither works."""
  path = pathlib.Path(source).expanduser()
  if path.exists():
    return path
  if not (isinstance(source, str) and _looks_like_hub_id(source)):
    raise FileNotFoundError(f"no checkpoint directory or file at {path}, and {str(source)!r} is "
                            "not a hub id of the form 'org/name'; pass a directory holding "
                            "config.json and *.safetensors")
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
    return pathlib.Path(snapshot_download(source, allow_patterns=list(HUB_PATTERNS)))
  except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one clear message
    raise FileNotFoundError(
        f"could not fetch {source!r} from the Hugging Face hub ({type(e).__name__}); download "
        "it where the hub is reachable (huggingface-cli download) or pass a local directory "
        "holding config.json and *.safetensors") from None


def read_config(root: pathlib.Path) -> dict:
  """The JSON object in a checkpoint directory's config.json, with one clear error when it is
  missing or not an object."""
  file = pathlib.Path(root) / "config.json"
  if not file.exists():
    raise FileNotFoundError(f"{file} is missing; a Hugging Face checkpoint directory needs one")
  try:
    c = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON: {e}") from None
  if not isinstance(c, dict):
    raise ValueError(f"{file} must hold a JSON object, not {type(c).__name__}")
  return c


def safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The shards a checkpoint directory's index names (or its single file), checked to exist and
  to lie inside the directory."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"no checkpoint directory or file at {path}")
  index = path / SAFETENSORS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index} is not a safetensors index (needs a 'weight_map'): {e}") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) for v in weight_map.values()):
      raise ValueError(f"{index}: 'weight_map' must map tensor names to file names")
    files = []
    for name in sorted(set(weight_map.values())):
      # shards are plain file names next to the index: never a path out of the directory
      if pathlib.PurePath(name).name != name or name in (".", "..") or "\\" in name:
        raise ValueError(f"{index}: shard {name!r} is not a plain file name in {path}")
      files.append(path / name)
  elif (path / SAFETENSORS_FILE).exists():
    files = [path / SAFETENSORS_FILE]
  else:
    files = sorted(path.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(f"{path} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}; "
                              "only safetensors checkpoints are read (re-save with "
                              "save_pretrained(safe_serialization=True))")
  for f in files:
    if not f.exists():
      raise FileNotFoundError(f"{f} is listed in {SAFETENSORS_INDEX} but missing")
  return files


def read_safetensors(files: list[pathlib.Path]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors in their stored dtypes (bf16 as ml_dtypes' bfloat16) plus the file each came
  from; anything but floating-point weights is refused."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  tensors, origin = {}, {}
  for f in files:
    try:
      with safe_open(str(f), framework="numpy") as st:
        for name in st.keys():
          tensors[name] = st.get_tensor(name)
          origin[name] = str(f)
    except Exception as e:  # noqa: BLE001 - SafetensorError is not a stable public name
      raise ValueError(f"{f} is not a readable safetensors file ({e}); it may be truncated or "
                       "corrupt — download or export it again") from None
  for name, x in tensors.items():
    if not np.issubdtype(x.dtype, np.floating) and x.dtype.name != "bfloat16":
      raise ValueError(f"tensor {name!r} in {origin[name]} has dtype {x.dtype}; weights must be "
                       "floating point")
  return tensors, origin


def save_safetensors(tensors: Mapping[str, np.ndarray], target: pathlib.Path) -> None:
  """Written to a temporary name and renamed: a killed write never leaves half a file."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  target = pathlib.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(target.name + f".tmp{os.getpid()}")
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
            metadata={"format": "pt"})
  os.replace(tmp, target)
