"""Stage 3: train the projector and the LLM together on video-text (caption) data."""

from longvid_jax import config as config_lib


def get_config(arg=None):
  del arg
  return config_lib.stage(loss="lm", task="caption", trainable=("projector", "llm"),
                          steps=3000, batch_size=128, lr=2e-5, warmup_steps=90)
