"""MLP projector: reduced visual tokens[B,N,C] → LLM embeddings[B,N,D] (LLaVA's mlp2x_gelu).

`norm` puts a LayerNorm on the input, as InternVL and Qwen2-VL do. Without it the tokens keep the
encoder's scale: EfficientNet's mid-level features give visual embeddings ~1000× the norm of
SmolLM2's word embeddings, which then dominate the residual stream of every layer and learn
slowly."""

from __future__ import annotations

import flax.linen as nn
import jax


class MLPProjector(nn.Module):
  out_features: int
  depth: int = 2
  norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm:  # epsilon as torch.nn.LayerNorm's, so exports match
      x = nn.LayerNorm(epsilon=1e-5, name="norm", scale_init=nn.with_logical_partitioning(
          nn.initializers.ones, ("embed_in",)), bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ("embed_in",)))(x)
    for i in range(self.depth):
      if i:
        x = nn.gelu(x)
      x = nn.Dense(self.out_features, name=f"linear_{i}", kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(),
          ("embed_in" if i == 0 else "mlp", "embed" if i == self.depth - 1 else "mlp")))(x)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
