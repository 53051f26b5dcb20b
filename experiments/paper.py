"""The paper's recipe: AE pretraining → projector alignment → joint training → SFT.

`get_config()` is the full-size model (SigLIP-so400m + SVC 4×4×4 + Qwen2-7B-Instruct, both
loaded by hub id from the Hugging Face cache or the hub; without either, loading stops with one
line saying how to provide the weights); variants:
  runlocal   the same recipe for one CPU: small pretrained models (EfficientNet-Lite0 on
             ImageNet, SmolLM2-135M-Instruct), few frames, steps and small batches.
  datasets   each stage reads the paper's dataset for it (manifests; see `datasets`).
  tokens1440 the paper's average budget: as many frames as make ~1,440 visual tokens.

`model.<group>.weights` names a checkpoint for that group (encoder, reducer, projector, llm);
`model.init_from` names a params checkpoint (`longvid import` writes one) that replaces every
group's init.

Token arithmetic (the run logs it as "visual tokens: ..."): SigLIP-so400m at 384 px gives a
27×27 grid per frame; the SVC pads it to 28×28 for its 4×4 spatial strides, and 32 frames to
8 temporal slots, so a video becomes 8·7·7 = 392 tokens: 32·729 / 392 = 59.5× fewer, not 64×,
because of the padding. The paper's ~1,440 tokens per video on average correspond to
1440 / 49 ≈ 29 temporal slots: `tokens1440` takes 29 · 4 = 116 frames per video, which gives
29·7·7 = 1,421 tokens (30 slots would give 1,470), 116·729 / 1421 = 59.5× fewer, and grows
seq_len by the 1,029 extra tokens. The paper's count is an average over videos of different
lengths; here every video gets the same budget, so batches keep one static shape.
"""

import pathlib

import ml_collections

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("ae_pretrain", "align", "joint", "sft")


def stage(name: str) -> ml_collections.ConfigDict:
  return config_lib.load(str(ROOT / "configs" / "stages" / f"{name}.py"))


def get_config(arg=None):
  c = config_lib.base()
  c.recipe = STAGES
  c.stages = ml_collections.ConfigDict({name: stage(name) for name in STAGES})

  c.model.encoder.update(name="siglip", preset="so400m-patch14-384",
                         weights="google/siglip-so400m-patch14-384")
  # bottleneck: the blocks' inner width, a quarter of SigLIP's 1152 channels (the usual 4×
  # narrowing of residual bottleneck blocks): each block's convolutions cost ~1/16 of full
  # width, while the residual constraint keeps the latent itself at 1152 channels
  c.model.reducer.update(name="svc", args=dict(strides=(4, 4, 4), bottleneck=288,
                                               constraint="residual"))
  c.model.projector.norm = True
  c.model.llm.args = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                          num_layers=28, num_heads=28, num_kv_heads=4, rope_theta=1e6,
                          rms_eps=1e-6, tie_embeddings=False, qkv_bias=True, dtype="bfloat16")
  c.model.llm.weights = "Qwen/Qwen2-7B-Instruct"  # the shapes above are this checkpoint's
  c.model.tokenizer = "Qwen/Qwen2-7B-Instruct"
  c.data.update(num_videos=20000, heldout_fraction=0.05, shots_per_video=8, frames_per_shot=16,
                num_frames=32, image_size=384, seq_len=2048)

  if arg == "runlocal":
    runlocal(c)
  elif arg == "datasets":
    datasets(c)
  elif arg == "tokens1440":
    visual_tokens(c, 1440)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; use runlocal, datasets, tokens1440 or nothing")
  return c


def visual_tokens(c: ml_collections.ConfigDict, target: int) -> None:
  """Frames per video (a multiple of the temporal stride) whose visual tokens come closest to
  `target`; seq_len grows by the extra tokens so the text keeps its room."""
  from longvid_jax.models import build  # pylint: disable=g-import-not-at-top
  m = build.model(c.model, 0)  # shapes only: no weights are read
  (h, w), stride = m.encoder.grid, int(c.model.reducer.args.strides[0])
  before = m.reducer.num_tokens(int(c.data.num_frames), h, w)
  frames = min(range(stride, 4097, stride), key=lambda t: abs(m.reducer.num_tokens(t, h, w)
                                                              - target))
  extra = m.reducer.num_tokens(frames, h, w) - before
  c.data.num_frames = frames
  c.data.seq_len += extra
  for s in c.stages.values():
    if s.seq_len is not None:
      s.seq_len += extra


DATA = pathlib.Path("data") / "paper"  # relative to where `longvid run` starts


def datasets(c: ml_collections.ConfigDict, root: pathlib.Path = DATA) -> None:
  """The paper's data, one dataset per stage, as manifests under `root` (write them with
  `longvid convert-dataset FORMAT INPUT OUT.jsonl`):
    ae_pretrain  long videos with shot changes, frames only  ae/{split}.jsonl (any video list)
    align        ~3M video-caption pairs                     align/{split}.jsonl (llava)
    joint        ~8M mixed caption and QA examples           joint/{split}.jsonl (llava)
    sft          ~1M QA: NExT-QA, PerceptionTest, EgoSchema  sft/<name>_{split}.jsonl
                 (nextqa, perceptiontest, egoschema formats) mixed by weight
  Evaluation reads the SFT mixture's first manifest (NExT-QA) unless eval settings change it.
  The synthetic defaults of config.data stay for shapes; each stage reads its own manifest
  with the Adaptive Video Sampler."""
  def manifest(path):
    return {"source": "manifest", "manifest": path, "sampler": "avs"}
  c.stages.ae_pretrain.data = manifest(str(root / "ae" / "{split}.jsonl"))
  c.stages.align.data = manifest(str(root / "align" / "{split}.jsonl"))
  c.stages.joint.data = manifest(str(root / "joint" / "{split}.jsonl"))
  c.stages.sft.data = manifest([(str(root / "sft" / f"{name}_{{split}}.jsonl"), weight)
                                for name, weight in (("nextqa", 1.0), ("perceptiontest", 1.0),
                                                     ("egoschema", 1.0))])
  c.data.update(source="manifest", manifest=str(root / "sft" / "nextqa_{split}.jsonl"),
                sampler="avs")


def runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrink sizes and steps so the whole recipe runs on a laptop CPU in minutes."""
  # real ImageNet weights that ship offline; at 64 px the stride-8 map is 8×8×40 per frame (the
  # token grid of a small ViT; colour survives better there than deeper in the network), and
  # 4×4×4 compression leaves 8 tokens per video
  c.model.encoder = ml_collections.ConfigDict(dict(
      name="efficientnet_lite0", preset="lite0", args=dict(image_size=64, output="stride8"),
      weights="efficientnet_lite0"))
  c.model.reducer.args.bottleneck = 32
  # a real pretrained instruct LLM that ships offline (GGUF, dequantised at load)
  c.model.llm.weights = "smollm2_135m_instruct_gguf"
  # scan_layers: one compiled layer instead of 30 (compiles take seconds, not a minute a stage)
  c.model.llm.args = dict(dtype="float32", scan_layers=True)
  c.model.tokenizer = "gguf:smollm2_135m_instruct_gguf"
  # two shots per video, so each of the two temporal tokens sees one shot; a one-line system
  # turn instead of SmolLM2's default. SFT examples ask all five questions of a video in one
  # 120-token conversation (2.5× the answers per token of one-turn examples); caption stages
  # need only 56 tokens. 1000 videos leave 50 held out for test (250 questions).
  c.data.update(num_videos=1000, shots_per_video=2, frames_per_shot=16, num_frames=8,
                image_size=64, seq_len=120, qa_turns=5,
                system_prompt="You answer questions about videos.")
  c.mesh.data = 1
  # ~9 minutes on 2 CPU cores; most of it is SFT, the stage the benchmark measures
  for name, steps, lr, bs, seq_len, every in (("ae_pretrain", 40, 2e-3, 4, None, 10),
                                              ("align", 16, 1e-2, 8, 56, 8),
                                              ("joint", 8, 5e-5, 4, 56, 8),
                                              ("sft", 36, 1e-4, 4, None, 20)):
    s = c.stages[name]
    s.update(steps=steps, lr=lr, batch_size=bs, warmup_steps=5, log_every=2,
             checkpoint_every=every, seq_len=seq_len)
