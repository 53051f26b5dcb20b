"""Stage 2: align the projector to the frozen LLM on video captions."""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.loss = "lm"
  c.task = "caption"
  c.trainable = ("projector",)
  c.steps = 2000
  c.batch_size = 256
  c.lr = 1e-3
  c.warmup_steps = 60
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.log_every = 10
  c.checkpoint_every = 500
  return c
