"""MLP projector: reduced visual tokens[B,N,C] → LLM embeddings[B,N,D] (LLaVA's mlp2x_gelu)."""

from __future__ import annotations

import flax.linen as nn
import jax


class MLPProjector(nn.Module):
  out_features: int
  depth: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      if i:
        x = nn.gelu(x)
      x = nn.Dense(self.out_features, name=f"linear_{i}", kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(),
          ("embed_in" if i == 0 else "mlp", "embed" if i == self.depth - 1 else "mlp")))(x)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
