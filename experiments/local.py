"""The local reproduction: the paper's recipe at a size that learns on a 2-core CPU in an hour.

Data: the offline long-video benchmark (several long shots and a 1.5–2 s needle per video, five
questions each: needle, counting, ordering, grounding, attribute), made once:

  longvid make-benchmark data/local --videos 1000 --seconds 30 --max-seconds 60 \
      --heldout 0.1 --cut-scores train val
  longvid run experiments/local.py

Training videos carry the generator's cuts as shot scores (`--cut-scores`), so the Adaptive Video
Sampler needs no detector pass over 800 videos; a test split made without the flag (another
`--seed`) is scored by TransNetV2 like any user video, once, into the detector's cache:

  longvid make-benchmark data/local_s1 --videos 160 --seconds 30 --max-seconds 60 \
      --heldout 0.4 --seed 1
  longvid precompute experiments/local.py --manifest data/local_s1/test.jsonl
  longvid eval workdir/local data/local_s1/test.jsonl

What differs from `paper.py:runlocal` (the demo), and why:
  - 8 AVS frames, one per shot: the SVC compresses space only (strides 1×4×4, 2×2 tokens per
    frame, 32 per video). With 5–7 shots in 8 frames, temporal pooling would average different
    shots into one token, and the needle (one frame) into its neighbours.
  - the frame times in the prompt (`data.timestamps`): grounding asks "what is shown at 00:51".
  - the first 8 of SmolLM2's 30 layers (`model.llm.layers`), and the LM head on the answer
    tokens only (`data.max_targets`): an SFT step took 2.0 ms per token (16 × 144 tokens, on a
    shared CPU) against the demo's 8.0 (4 × 120, 30 layers, quiet), so the hour buys thousands
    of examples instead of a few hundred.
  - multiple choice trained and scored as the bare question answered by the option's text
    (`data.choices="text"`), and each video's timeline caption (`meta.caption`) taught before
    the questions: the projector alone, then with the LLM mixed with questions.
What it scores so far, and what was tried: docs/results.md ("The local recipe").
"""

import pathlib

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path("data") / "local"  # relative to where `longvid run` starts


def get_config(arg=None):
  if arg:
    raise ValueError(f"experiments/local.py takes no variant, got {arg!r}")
  c = config_lib.load(str(ROOT / "experiments" / "paper.py") + ":runlocal")
  c.recipe = ("ae_pretrain", "align", "joint", "sft")
  c.model.reducer.args.update(strides=(1, 4, 4))
  c.model.llm.layers = 8
  c.data.update(source="manifest", manifest=str(DATA / "{split}.jsonl"), sampler="avs",
                num_frames=8, image_size=64, timestamps=True, qa_turns=1, seq_len=144,
                choices="text", max_targets=16, num_videos=1000)
  for name, steps, lr, bs, every in (("ae_pretrain", 60, 2e-3, 8, 30),
                                     ("align", 100, 1e-3, 16, 50),
                                     ("joint", 100, 1e-4, 16, 50),
                                     ("sft", 100, 1e-4, 16, 50)):
    c.stages[name].update(steps=steps, lr=lr, batch_size=bs, warmup_steps=10, log_every=10,
                          checkpoint_every=every, seq_len=None)
  # captions (each video's timeline, `meta.caption`) are ~130 answer tokens
  c.stages.align.update(task="caption", seq_len=288, data={"max_targets": 160})
  c.stages.joint.update(task="mix", seq_len=288, data={"max_targets": 160})
  c.eval.update(split="val")
  return c
