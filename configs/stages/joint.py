"""Stage 3: train the projector and the LLM together on video-text (caption) data."""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.loss = "lm"
  c.task = "caption"
  c.trainable = ("projector", "llm")
  c.steps = 3000
  c.batch_size = 128
  c.lr = 2e-5
  c.warmup_steps = 90
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.log_every = 10
  c.checkpoint_every = 500
  return c
