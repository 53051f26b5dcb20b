"""The reducer interface: the registry every reducer joins and the value every reducer returns."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import chex
import flax.struct
import jax

from longvid_jax.registry import Registry

REDUCERS = Registry("token reducer")


@flax.struct.dataclass
class Reduced:
  tokens: jax.Array  # [B,N,C], time-major order
  mask: jax.Array  # [B,N] bool, True on real tokens
  losses: dict  # extra scalar training losses (e.g. {"kl": ...}); often empty


class TextAgnostic:
  """Mixin of reducers that read only the token grid: the reducer call ignores the query (and
  has no dropout), checks tokens[B,T,H,W,C] and hands them to the module's compact `reduce`."""

  def __call__(self, tokens: jax.Array, query: jax.Array | None = None,
               deterministic: bool = True, query_mask: jax.Array | None = None) -> Reduced:
    del query, query_mask, deterministic
    chex.assert_rank(tokens, 5)
    return self.reduce(tokens)


@runtime_checkable
class Autoencoder(Protocol):
  """A reducer with an objective of its own, which the AE-pretraining stage optimises."""

  def reconstruction_loss(self, f: jax.Array, deterministic: bool = False
                          ) -> tuple[jax.Array, dict]:
    ...
