"""Vision encoders: frames[N,S,S,3] (float in [0,1], at the encoder's `image_size`) → tokens[N,h,w,C].

Each encoder normalises its input itself, so the data pipeline only decodes and resizes.
Video models fold time into the batch before the encoder and unfold it after.
"""

from longvid_jax.registry import Registry

ENCODERS = Registry("vision encoder")

# Importing the implementations registers them (after ENCODERS exists: they import it).
from longvid_jax.models.encoders import efficientnet, siglip  # noqa: E402,F401


def build(name: str, preset: str | None = None, **overrides):
  """An encoder module from its registry name, a preset of its config class, and overrides."""
  import typing  # pylint: disable=g-import-not-at-top
  cls = ENCODERS.get(name)
  cfg_cls = typing.get_type_hints(cls)["cfg"]
  cfg = cfg_cls.preset(preset, **overrides) if preset else cfg_cls(**overrides)
  return cls(cfg)
