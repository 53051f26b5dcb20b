"""The embedded default: the paper's four-stage recipe at laptop size, on data it makes itself.

`longvid run configs/demo.py` needs no flags, no hub access and no GPU.
"""

import pathlib

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def get_config(arg=None):
  c = config_lib.load(str(ROOT / "experiments" / "paper.py") + ":runlocal")
  if arg:
    raise ValueError(f"configs/demo.py takes no variant, got {arg!r}")
  return c
