"""Stage 4: supervised fine-tuning on video question answering."""

from longvid_jax import config as config_lib


def get_config(arg=None):
  del arg
  return config_lib.stage(loss="lm", task="qa", trainable=("projector", "llm"), steps=3000,
                          batch_size=128, lr=1e-5, warmup_steps=90)
