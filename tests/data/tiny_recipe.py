"""The demo recipe shrunk further for tests: a few steps per stage, 32-pixel frames."""

import pathlib

import ml_collections

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def get_config(arg=None):
  del arg
  c = config_lib.load(str(ROOT / "configs" / "demo.py"))
  # a tiny random SigLIP: 32-pixel frames in 8-pixel patches, a 4×4 token grid
  c.model.encoder = ml_collections.ConfigDict(dict(
      name="siglip", preset="tiny", weights=None,
      args=dict(image_size=32, num_layers=1, hidden_size=32, intermediate_size=64)))
  c.model.reducer.args.bottleneck = 8
  c.model.llm.weights = None  # a tiny random LLM: fast, but alignment has nothing to align to
  c.model.llm.args = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=1,
                          num_heads=4, num_kv_heads=2, rope_theta=1e5)
  c.data.update(num_videos=40, num_frames=4, image_size=32, seq_len=80, qa_turns=1)
  for s in c.stages.values():
    s.update(steps=8, batch_size=2, log_every=1, checkpoint_every=2, warmup_steps=1, lr=1e-2,
             keep_checkpoints=True, seq_len=None)  # tests damage finished stages' checkpoints
  c.stages.align.seq_len = 72  # captions fit in fewer tokens than data.seq_len
  c.eval.split = None  # held-out scoring is tested on its own (test_runner)
  return c
