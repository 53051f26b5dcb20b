"""The local reproduction: the paper's recipe at a size that learns on a 2-core CPU in an hour.

Data: the offline long-video benchmark (several long shots and a 1.5–2 s needle per video, five
questions each: needle, counting, ordering, grounding, attribute), made once, then the cache
step (the encoder's features of each video's 8 AVS frames), then training:

  longvid make-benchmark data/local --videos 4200 --seconds 30 --max-seconds 60 \
      --heldout 0.05 --cut-scores train val --seed 2 --train-question-sets 3
  longvid precompute experiments/local.py --manifest data/local/train.jsonl \
      --manifest data/local/val.jsonl
  longvid run experiments/local.py

Training videos carry the generator's cuts as shot scores (`--cut-scores`), so the Adaptive Video
Sampler needs no detector pass over 4,000 videos; a test split made without the flag (another
`--seed`) is scored by TransNetV2 like any user video, once, into the detector's cache:

  longvid make-benchmark data/local_s1 --videos 160 --seconds 30 --max-seconds 60 \
      --heldout 0.4 --seed 1
  longvid precompute experiments/local.py --manifest data/local_s1/test.jsonl
  longvid eval workdir/local data/local_s1/test.jsonl

What differs from `paper.py:runlocal` (the demo), and why:
  - 8 AVS frames, one per shot: the SVC compresses space only (strides 1×2×2, 4×4 tokens per
    frame, 128 per video). With 5–7 shots in 8 frames, temporal pooling would average different
    shots into one token, and the needle (one frame) into its neighbours.
  - each frame's time (mm:ss.d, as the grounding questions write it) right before the frame's
    tokens (`data.timestamp_style="interleaved"`), not in one sentence after all of them.
  - a small decoder of SmolLM2's shape (4 layers, 256 wide) trained from scratch, reading
    SmolLM2's tokenizer, with the projector straight after the compressor's pretraining. A step
    costs 2.3 s where SmolLM2's first two pretrained layers cost 3.4, and 700 steps reach the
    same held-out accuracy in 28 minutes instead of 42 (docs/results.md, "The local recipe").
    The pretrained layers bring nothing these short, templated questions need; with 8 of them
    and caption stages first the model saw ~5,000 one-question examples and stayed at chance.
  - a video's five questions share one example (`data.merge_questions`, `data.qa_turns=5`), so
    the video prefix is paid once per five answers, answered by the option's text
    (`data.choices="text"`), with the LM head on the answer tokens only (`data.max_targets`).
  - 4,000 training videos: a small model overfits 800 (train accuracy 1.0 while held-out
    accuracy stops rising; docs/results.md).
"""

import pathlib

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path("data") / "local"  # relative to where `longvid run` starts


def get_config(arg=None):
  if arg:
    raise ValueError(f"experiments/local.py takes no variant, got {arg!r}")
  c = config_lib.load(str(ROOT / "experiments" / "paper.py") + ":runlocal")
  c.recipe = ("ae_pretrain", "sft")
  c.model.reducer.args.update(strides=(1, 2, 2))
  # a small decoder of SmolLM2's shape, trained from scratch (the tokenizer stays SmolLM2's)
  c.model.llm.update(weights=None, layers=None, args=dict(
      vocab_size=49152, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
      num_kv_heads=2, dtype="float32", scan_layers=True))
  c.data.update(source="manifest", manifest=str(DATA / "{split}.jsonl"), sampler="avs",
                num_frames=8, image_size=64, timestamps=True, timestamp_style="interleaved",
                choices="text",
                merge_questions=True, qa_turns=5, seq_len=360, max_targets=32,
                features=str(DATA / "features"))
  c.stages.ae_pretrain.update(steps=60, lr=2e-3, batch_size=8, warmup_steps=10, log_every=10,
                              checkpoint_every=30, seq_len=None)
  c.stages.sft.update(steps=700, lr=1e-3, batch_size=16, warmup_steps=30, log_every=10,
                      checkpoint_every=100, seq_len=None)
  c.eval.update(split="val")
  return c
