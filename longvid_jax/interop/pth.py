"""PyTorch `.pth` state dicts as NumPy arrays, without PyTorch.

Released weights (TransNetV2, EfficientNet-Lite0) ship as `torch.save` files; the main path must
not need PyTorch to read them. Both on-disk layouts are handled: the zip archive (`data.pkl` plus
one raw file per storage, torch >= 1.6) and the older single-stream format (magic number,
pickles, then the storages back to back). The unpickler only builds plain containers and tensors:
any other class in the file is refused, so a weights file cannot run code.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for `torch.FloatStorage` etc.: only its dtype matters."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset: int, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  if isinstance(storage, _Placeholder):  # legacy format: the data comes after the pickle
    return _Deferred(storage, offset, size, stride)
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[offset])
  item = storage.dtype.itemsize
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise ValueError(f"tensor of size {size} at offset {offset} runs past its storage "
                     f"({storage.size} elements)")
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride])
  return np.array(view)  # own the memory (and make it contiguous)


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, load_storage: Callable[[tuple], np.ndarray]):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    return self._load_storage(pid)


def _storage_dtype(storage_type) -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
  return storage_type.dtype


def _load_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
    prefix = pkl[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder") != b"little":
      raise ValueError(f"{path} was saved big-endian; re-save it on a little-endian machine")
    storages: dict[str, np.ndarray] = {}

    def load(pid: tuple) -> np.ndarray:
      _, storage_type, key, _location, numel = pid[:5]
      if key not in storages:
        dtype = _storage_dtype(storage_type)
        raw = zf.read(f"{prefix}data/{key}")
        storages[key] = np.frombuffer(raw, dtype, count=int(numel))
      return storages[key]

    with zf.open(pkl[0]) as f:
      return _Unpickler(io.BytesIO(f.read()), load).load()


def _load_legacy(path: pathlib.Path) -> Any:
  with open(path, "rb") as f:
    if _Unpickler(f, _refuse).load() != _LEGACY_MAGIC:
      raise ValueError(f"{path} is not a PyTorch checkpoint (bad magic number)")
    _, _ = _Unpickler(f, _refuse).load(), _Unpickler(f, _refuse).load()  # version, system info
    pending: dict[str, tuple[np.dtype, int]] = {}
    arrays: dict[str, np.ndarray] = {}
    views: list[tuple[str, str, int, int]] = []

    def load(pid: tuple) -> np.ndarray:
      _, storage_type, key, _location, numel, view = pid[:6]
      dtype = _storage_dtype(storage_type)
      pending.setdefault(key, (dtype, int(numel)))
      if view is not None:  # old files: a storage view (view key, offset, size)
        views.append((view[0], key, int(view[1]), int(view[2])))
        key = view[0]
      # the storages follow the pickles, so hand out a placeholder filled in below
      return arrays.setdefault(key, _Placeholder(key))

    result = _Unpickler(f, load).load()
    keys = _Unpickler(f, _refuse).load()
    for key in keys:
      dtype, numel = pending[key]
      (n,) = struct.unpack("<q", f.read(8))
      data = f.read(n * dtype.itemsize)
      if n != numel or len(data) != n * dtype.itemsize:
        raise ValueError(f"{path} is truncated (storage {key}: {len(data)} of "
                         f"{numel * dtype.itemsize} bytes)")
      arrays[key] = np.frombuffer(data, dtype)
    for view_key, key, offset, size in views:
      arrays[view_key] = arrays[key][offset:offset + size]
  return _resolve(result, arrays)


class _Placeholder:
  def __init__(self, key: str):
    self.key = key


class _Deferred:
  """A tensor whose storage is read after the pickle (legacy format)."""

  def __init__(self, storage, *args):
    self.storage, self.args = storage, args


def _refuse(pid):
  raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")


def _resolve(obj, arrays: dict[str, np.ndarray]):
  if isinstance(obj, _Deferred):
    return _rebuild_tensor(arrays[obj.storage.key], *obj.args)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v, arrays)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, arrays) for v in obj)
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`torch.load(path, weights_only=True)` for a flat state dict, as NumPy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"PyTorch checkpoint {path} does not exist")
  try:
    if zipfile.is_zipfile(path):
      state = _load_zip(path)
    else:
      state = _load_legacy(path)
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, struct.error,
          zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a readable PyTorch state dict ({e})") from None
  if not isinstance(state, dict):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
  bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f"{path}: entries {bad[:5]} are not tensors")
  return dict(state)
