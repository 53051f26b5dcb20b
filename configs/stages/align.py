"""Stage 2: align the projector to the frozen LLM on video captions."""

from longvid_jax import config as config_lib


def get_config(arg=None):
  del arg
  return config_lib.stage(loss="lm", task="caption", trainable=("projector",), batch_size=256,
                          lr=1e-3, warmup_steps=60)
