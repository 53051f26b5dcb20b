"""Stage 1: pretrain the compressor as an autoencoder (L1 reconstruction of encoder features);
the vision encoder is frozen."""

from longvid_jax import config as config_lib


def get_config(arg=None):
  del arg
  return config_lib.stage(loss="reconstruction", task="reconstruction", trainable=("reducer",))
