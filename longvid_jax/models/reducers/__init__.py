"""Token reducers: the compression step between the vision encoder and the projector.

Every reducer is a linen module built from its config and called as

    out = reducer(tokens, query=None, deterministic=True, query_mask=None)  # tokens[B,T,H,W,C]

`query[B,Lq,D]` is the question in the LLM's embedding space (`query_mask[B,Lq]` marks its real
tokens); text-guided reducers (LongVU) use it, the others ignore it. It returns
`Reduced(tokens[B,N,C], mask[B,N], losses)`. N is static for a given input grid
(`reducer.num_tokens(T, H, W)`), so everything jits; reducers whose output length varies per
sample mark padding with `mask=False`. Reducers that are autoencoders also implement
`reconstruction_loss(tokens) -> (loss, metrics)`, which the AE-pretraining stage optimises.
"""

from longvid_jax.models.reducers.base import REDUCERS, Reduced  # noqa: F401

# Importing the implementations registers them.
from longvid_jax.models.reducers import (  # noqa: E402,F401  pylint: disable=g-import-not-at-top
    fila, longvu, perceiver, pooling, svc, tome)
