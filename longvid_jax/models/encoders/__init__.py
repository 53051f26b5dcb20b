"""Vision encoders: frames[N,S,S,3] (float in [0,1], at the encoder's `image_size`) → tokens[N,h,w,C].

Each encoder normalises its input itself, so the data pipeline only decodes and resizes.
Video models fold time into the batch before the encoder and unfold it after.
"""

from longvid_jax.registry import Registry

ENCODERS = Registry("vision encoder")
