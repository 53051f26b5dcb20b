"""Vision encoders: frames[N,S,S,3] (in [0,1], at the encoder's `image_size`) → tokens[N,h,w,C].

Each encoder normalises its input itself, so the data pipeline only decodes and resizes.
Video models fold time into the batch before the encoder and unfold it after.
A new encoder is one module here registered in `ENCODERS`, plus its checkpoint converter
registered in `interop/vision.py`.
"""

import typing

from longvid_jax.models.encoders.base import ENCODERS, TokenGrid  # noqa: F401

# Importing the implementations registers them.
from longvid_jax.models.encoders import efficientnet, siglip  # noqa: E402,F401


def config(name: str, preset: str | None = None, **overrides):
  """The config dataclass of encoder `name`: a preset of it, or its defaults, plus overrides."""
  cfg_cls = typing.get_type_hints(ENCODERS.get(name))["cfg"]
  return cfg_cls.preset(preset, **overrides) if preset else cfg_cls(**overrides)
