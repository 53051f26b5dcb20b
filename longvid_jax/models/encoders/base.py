"""The encoder interface: the registry every encoder joins and the shape facts the rest reads."""

from __future__ import annotations

from longvid_jax.registry import Registry

ENCODERS = Registry("vision encoder")


class TokenGrid:
  """What the pipeline and reducers ask of an encoder, read from its config (`cfg`)."""

  @property
  def image_size(self) -> int:
    return self.cfg.image_size

  @property
  def grid(self) -> tuple[int, int]:
    return self.cfg.grid

  @property
  def width(self) -> int:
    return self.cfg.width
