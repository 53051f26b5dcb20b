"""config.validate: every inconsistent setting fails before anything is built, in one line that
names the field to change."""

import pathlib

import ml_collections
import pytest

from longvid_jax import config as config_lib
from longvid_jax.models import reducers

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")


def _bad(edit, match):
  c = config_lib.load(RECIPE)
  edit(c)
  with pytest.raises(ValueError, match=match) as e:
    config_lib.validate(c)
  assert "\n" not in str(e.value)


def test_shipped_configs_pass():
  for spec in (RECIPE, "configs/demo.py", "experiments/paper.py", "experiments/local.py"):
    config_lib.validate(config_lib.load(str(pathlib.Path(__file__).parents[1] / spec)))


def test_stage_fields():
  _bad(lambda c: setattr(c.stages.align, "loss", "contrastive"), r"stages\.align\.loss")
  _bad(lambda c: setattr(c.stages.sft, "task", "ocr"), r"stages\.sft\.task")
  _bad(lambda c: setattr(c.stages.joint, "task", "reconstruction"), r"stages\.joint.*caption")
  _bad(lambda c: setattr(c.stages.sft, "nan_policy", "ignore"), r"stages\.sft\.nan_policy")
  _bad(lambda c: setattr(c.stages.sft, "steps", 0), r"stages\.sft\.steps.*positive integer")
  _bad(lambda c: setattr(c, "recipe", ("ae_pretrain", "rlhf")), r"stage 'rlhf'")


def test_registry_names():
  _bad(lambda c: setattr(c.model.encoder, "name", "clip"), r"model\.encoder\.name 'clip'.*siglip")
  _bad(lambda c: setattr(c.model.reducer, "name", "svd"), r"model\.reducer\.name 'svd'.*svc")
  _bad(lambda c: setattr(c.model.encoder, "preset", "huge"), r"model\.encoder.*huge")
  _bad(lambda c: c.data.update(sampler="random"), r"data\.sampler 'random'.*uniform")


def test_reducer_strides_and_grid():
  for strides in ((4, 4), (0, 4, 4), (4, 4.5, 4)):
    _bad(lambda c, s=strides: setattr(c.model.reducer.args, "strides", s),
         r"model\.reducer\.args\.strides.*three positive integers")
  _bad(lambda c: setattr(c.data, "image_size", 48), r"data\.image_size=48.*set data\.image_size=32")


def test_interleaved_frame_times_need_frames_kept_apart():
  """Each frame's time sits before its own tokens, so a reducer that pools frames together
  (temporal stride > 1) has no per-frame tokens to label."""
  def interleave(c, strides):
    c.model.reducer.args.strides = strides
    c.data.update(timestamps=True, timestamp_style="interleaved")
  _bad(lambda c: interleave(c, (2, 2, 2)),
       r"data\.timestamp_style='interleaved'.*mixes frames.*temporal stride of 1")

  def perceiver(c):  # one latent per frame's 4×4 tokens, so the counts match, but each reads all
    config_lib.assign(c, "model.reducer", ml_collections.ConfigDict(
        {"name": "perceiver", "args": {"ratio": 1 / 16}}), what="test")
    c.data.update(timestamps=True, timestamp_style="interleaved")
  _bad(perceiver, r"model\.reducer \(perceiver.*mixes frames")
  tome = reducers.REDUCERS.get("tome")  # merged per frame, or across the whole video
  assert config_lib.frames_apart(tome(over="frame"), 8, 8, 8)
  assert not config_lib.frames_apart(tome(over="video"), 8, 8, 8)
  _bad(lambda c: c.data.update(timestamp_style="inline"), r"data\.timestamp_style='inline'")
  c = config_lib.load(RECIPE)
  interleave(c, (1, 2, 2))
  config_lib.validate(c)


def test_question_first_is_a_switch():
  _bad(lambda c: setattr(c.data, "question_first", None),
       r"data\.question_first=None must be True or False")


def test_token_budget():
  # 4 frames of a 4×4 grid at strides 1×1×1: 64 visual tokens, plus text, in seq_len 70
  def edit(c):
    c.model.reducer.args.strides = (1, 1, 1)
    c.data.seq_len = 70
    c.stages.align.seq_len = None  # the tiny recipe's own, checked in the next test
  _bad(edit, r"data\.seq_len=70 cannot hold 64 visual tokens.*raise data\.seq_len to >= 80")
  _bad(lambda c: c.model.llm.args.update(max_position=64), r"exceeds the LLM's 64 positions")


def test_stage_seq_len_overrides_data_seq_len():
  """A stage may set its own example length (short captions, long multi-turn QA); validation
  checks each length against the token budget and names the field that set it."""

  def edit(c):
    c.model.reducer.args.strides = (1, 1, 1)  # 64 visual tokens
    c.data.seq_len = 96
    c.stages.align.seq_len = 80
    c.stages.sft.seq_len = 70
  _bad(edit, r"stages\.sft\.seq_len=70 cannot hold 64 visual tokens.*\(stages sft\).*"
             r"raise stages\.sft\.seq_len to >= 80")
  _bad(lambda c: c.stages.align.update(seq_len=0), r"stages\.align\.seq_len.*positive integer")
  _bad(lambda c: (c.model.llm.args.update(max_position=64), c.data.update(seq_len=64),
                 c.stages.align.update(seq_len=None), c.stages.sft.update(seq_len=65)),
       r"stages\.sft\.seq_len=65 exceeds the LLM's 64 positions")
  c = config_lib.load(RECIPE)
  before = c.data.seq_len
  c.stages.sft.seq_len = before + 8
  config_lib.validate(c)
  data = config_lib.stage_data(c, c.stages.sft)
  assert data.seq_len == before + 8 and data.image_size == c.data.image_size
  assert c.data.seq_len == before  # the copy changed, not the run's data config
  assert config_lib.stage_data(c, c.stages.joint) is c.data  # unset: data.seq_len


def test_sampler_k_within_frame_budget():
  c = config_lib.load(RECIPE)
  c.data.sampler = "avs"
  config_lib.validate(c)
  _bad(lambda c: c.data.update(num_frames=40), r"data\.num_frames=40 exceeds the frame budget")
  _bad(lambda c: c.data.update(sampler="nearest"), r"data\.sampler 'nearest' is unknown")
  _bad(lambda c: c.data.sampler_args.update(k=3), r"sampler_args\.k is not used")


def test_mesh_against_devices():  # conftest gives 8 CPU devices
  _bad(lambda c: c.mesh.update(data=3), r"config\.mesh.*change the mesh sizes")
  _bad(lambda c: c.mesh.update(data=-1, fsdp=3), r"config\.mesh")
  _bad(lambda c: c.mesh.update(data=4), r"stages\.ae_pretrain\.batch_size=2.*multiple of 4")


BAD_SETS = [  # (--set, what the one-line error must name)
    ("data.num_frames=eight", r"data\.num_frames"),
    ("data.num_frames=8.5", r"data\.num_frames"),
    ("recipe=sft", r"recipe"),
    ("recipe=()", r"recipe"),
    ("stages.sft=3", r"stages\.sft"),
    ("stages.sft.lr=fast", r"stages\.sft\.lr"),
    ("data.source=youtube", r"data\.source.*youtube"),
    ("data.source=manifest", r"data\.manifest"),
    ("seed=-1", r"seed"),
    ("data.heldout_fraction=1.5", r"data\.heldout_fraction"),
    ("stages.sft.trainable=('projector','lmm')", r"stages\.sft\.trainable.*lmm"),
    ("stages.sft.grad_accum=-2", r"stages\.sft\.grad_accum"),
    ("stages.sft.grad_accum=0", r"stages\.sft\.grad_accum"),
    ("stages.align.warmup_steps=-5", r"stages\.align\.warmup_steps"),
    ("stages.sft.weight_decay=-1.0", r"stages\.sft\.weight_decay"),
    ("data.timestamps=yes", r"data\.timestamps"),
    ("data.detector_mode=slow", r"data\.detector_mode"),
    ("data.decode_timeout=0", r"data\.decode_timeout"),
    ("eval.videos=0", r"eval\.videos"),
    ("model.projector.depth=0", r"model\.projector\.depth"),
    ("data.read_threads=0", r"data\.read_threads"),
    ("data.nonexistent=1", r"nonexistent"),
    ("data.choices=words", r"data\.choices.*letters"),
    ("data.max_targets=0", r"data\.max_targets"),
    ("model.llm.layers=0", r"model\.llm\.layers"),
]


@pytest.mark.parametrize("assignment,match", BAD_SETS)
def test_cli_rejects_bad_values_in_one_line_before_building(assignment, match, tmp_path, capsys,
                                                             monkeypatch):
  """`longvid run` with a bad --set exits 2 with one line naming the field; nothing is built
  (the runner never starts, the workdir is never made)."""
  import re
  from longvid_jax import cli
  from longvid_jax.train import runner
  monkeypatch.setattr(runner, "_run", lambda *a: pytest.fail("the runner started"))
  workdir = tmp_path / "run"
  assert cli.main(["run", RECIPE, "--workdir", str(workdir), "--set", assignment]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and re.search(match, err), err
  assert "Traceback" not in err and not workdir.exists()


def test_good_sets_still_work():
  c = config_lib.load(RECIPE)
  config_lib.override(c, ["data.read_threads=4", "data.fps=2", "stages.sft.lr=3e-4",
                          "model.reducer.args.kl_weight=0.1", "data.sampler=avs",
                          "data.sampler_args={'window': 3}", "stages.sft.grad_accum=2"])
  config_lib.validate(c)
  assert c.data.read_threads == 4 and c.data.fps == 2 and c.stages.sft.grad_accum == 2


def test_rationales_need_manifest_records():
  _bad(lambda c: c.data.update(rationale=True), r"data\.rationale=True.*source='manifest'")
