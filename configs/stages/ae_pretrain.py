"""Stage 1: pretrain the compressor as an autoencoder (L1 reconstruction of encoder features);
the vision encoder is frozen."""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.loss = "reconstruction"
  c.task = "reconstruction"
  c.trainable = ("reducer",)
  c.steps = 2000
  c.batch_size = 64
  c.lr = 1e-4
  c.warmup_steps = 100
  c.weight_decay = 0.0
  c.grad_clip = 1.0
  c.log_every = 10
  c.checkpoint_every = 500
  return c
