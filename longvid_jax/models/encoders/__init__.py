"""Vision encoders: frames[N,S,S,3] (in [0,1], at the encoder's `image_size`) → tokens[N,h,w,C].

Each encoder normalises its input itself, so the data pipeline only decodes and resizes.
Video models fold time into the batch before the encoder and unfold it after.
"""

from longvid_jax.registry import Registry

ENCODERS = Registry("vision encoder")

# Importing the implementations registers them (after ENCODERS exists: they import it).
from longvid_jax.models.encoders import efficientnet, siglip  # noqa: E402,F401


def config(name: str, preset: str | None = None, **overrides):
  """The config dataclass of encoder `name`: a preset of it, or its defaults, plus overrides."""
  import typing  # pylint: disable=g-import-not-at-top
  cfg_cls = typing.get_type_hints(ENCODERS.get(name))["cfg"]
  return cfg_cls.preset(preset, **overrides) if preset else cfg_cls(**overrides)


def build(name: str, preset: str | None = None, **overrides):
  """An encoder module from its registry name, a preset of its config class, and overrides."""
  return ENCODERS.get(name)(config(name, preset, **overrides))


def load_pretrained(name: str, source: str, cfg):
  """(params, cfg) of encoder `name` from a checkpoint. Each encoder class knows its own format
  (`load_pretrained(source, cfg)`); the returned cfg may differ where the checkpoint fixes
  shapes (a SigLIP tower's width and depth)."""
  return ENCODERS.get(name).load_pretrained(source, cfg)
