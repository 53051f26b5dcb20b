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
TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")


def _looks_like_hub_id(source: str) -> bool:
  return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not source.startswith(".")


def model_dir(source: str | os.PathLike,
              patterns: tuple[str, ...] = HUB_PATTERNS) -> pathlib.Path:
  """A local file or directory as it is; an `org/name` hub id fetched with huggingface_hub (only
  the files matching `patterns`, or read from its cache), failing in one line when neither
  works."""
  path = pathlib.Path(source).expanduser()
  if path.exists():
    return path
  if not (isinstance(source, str) and _looks_like_hub_id(source)):
    raise FileNotFoundError(f"no checkpoint directory or file at {path}, and {str(source)!r} is "
                            "not a hub id of the form 'org/name'; pass a directory holding "
                            "config.json and *.safetensors")
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
    return pathlib.Path(snapshot_download(source, allow_patterns=list(patterns)))
  except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one clear message
    raise FileNotFoundError(
        f"could not fetch {source!r} from the Hugging Face hub ({type(e).__name__}); download "
        "it where the hub is reachable (huggingface-cli download) or pass a local directory "
        "holding its files (config.json, *.safetensors, tokenizer files)") from None


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


class LazyTensors(Mapping):
  """name → tensor over safetensors files, each tensor read from disk when asked for and not
  kept, so a converter that walks `items()` holds the converted model plus one tensor, never
  two copies of the model."""

  def __init__(self, files: list[pathlib.Path]):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self._open = safe_open
    self.origin: dict[str, str] = {}
    for f in files:
      try:
        with safe_open(str(f), framework="numpy") as st:
          dtypes = {name: st.get_slice(name).get_dtype() for name in st.keys()}
      except Exception as e:  # noqa: BLE001 - SafetensorError is not a stable public name
        raise ValueError(f"{f} is not a readable safetensors file ({e}); it may be truncated or "
                         "corrupt — download or export it again") from None
      for name, dt in dtypes.items():
        if dt not in _FLOAT_DTYPES:
          raise ValueError(f"tensor {name!r} in {f} has dtype {dt}; weights must be floating "
                           "point")
        self.origin[name] = str(f)

  def __getitem__(self, name: str) -> np.ndarray:
    f = self.origin[name]
    try:
      with self._open(f, framework="numpy") as st:
        return st.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - the file changed or is cut short after its header
      raise ValueError(f"{f}: tensor {name!r} is not readable ({e}); the file may be truncated "
                       "or corrupt — download or export it again") from None

  def __iter__(self):
    return iter(self.origin)

  def __len__(self) -> int:
    return len(self.origin)


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def read_safetensors(files: list[pathlib.Path]) -> tuple[LazyTensors, dict[str, str]]:
  """Every tensor of the files, read lazily in its stored dtype (bf16 as ml_dtypes' bfloat16),
  plus the file each comes from; anything but floating-point weights is refused up front."""
  tensors = LazyTensors(files)
  return tensors, tensors.origin


def save_safetensors(tensors: Mapping[str, np.ndarray], target: pathlib.Path) -> None:
  """Written to a temporary name and renamed: a killed write never leaves half a file."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  target = pathlib.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(target.name + f".tmp{os.getpid()}")
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
            metadata={"format": "pt"})
  os.replace(tmp, target)


def _shard_name(i: int, n: int) -> str:
  return f"model-{i:05d}-of-{n:05d}.safetensors" if n > 1 else SAFETENSORS_FILE


def save_sharded(tensors: Mapping[str, np.ndarray], out_dir: pathlib.Path,
                 max_shard_bytes: int) -> list[pathlib.Path]:
  """One model.safetensors, or shards of at most `max_shard_bytes` each (a larger tensor gets
  a shard to itself) with the model.safetensors.index.json transformers and the hub read.
  Weight files a previous export left in `out_dir` are removed first."""
  if max_shard_bytes < 1:
    raise ValueError(f"max shard size must be positive, got {max_shard_bytes} bytes")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for old in [*out_dir.glob("model-*-of-*.safetensors"), out_dir / SAFETENSORS_FILE,
              out_dir / SAFETENSORS_INDEX]:
    old.unlink(missing_ok=True)
  shards, size = [[]], 0
  for name, x in tensors.items():
    if shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += x.nbytes
  paths, weight_map = [], {}
  for i, names in enumerate(shards, 1):
    path = out_dir / _shard_name(i, len(shards))
    save_safetensors({k: tensors[k] for k in names}, path)
    weight_map.update({k: path.name for k in names})
    paths.append(path)
  if len(shards) > 1:
    index = {"metadata": {"total_size": int(sum(x.nbytes for x in tensors.values()))},
             "weight_map": weight_map}
    (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
  return paths


def parse_size(text: str) -> int:
  """'5GB', '500MB', '2GiB', '1000' (bytes) → bytes, the way transformers' max_shard_size reads."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
  if not m:
    raise ValueError(f"shard size {text!r} is not a size like 5GB, 500MB or 2GiB")
  unit = (m.group(2) or "B").upper()
  scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
           "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
  n = int(float(m.group(1)) * scale)
  if n < 1:
    raise ValueError(f"shard size {text!r} must be at least one byte")
  return n
