"""experiments/paper.py: the paper's models named by hub id, its SVC bottleneck and token
arithmetic, checked without weights or network; hub ids load from local directories."""

from __future__ import annotations

import pathlib
import time

import pytest
import transformers

from longvid_jax import config as config_lib
from longvid_jax import runs
from longvid_jax.models import build
from longvid_jax.models.encoders.siglip import SiglipConfig
from test_llm_parity import hf_model  # pylint: disable=g-bad-import-order

ROOT = pathlib.Path(__file__).parents[1]
PAPER = str(ROOT / "experiments" / "paper.py")


def test_paper_recipe_names_real_weights_and_a_narrow_bottleneck():
  c = config_lib.load(PAPER)
  config_lib.validate(c)
  assert c.model.encoder.weights == "google/siglip-so400m-patch14-384"
  assert c.model.llm.weights == c.model.tokenizer == "Qwen/Qwen2-7B-Instruct"
  width = SiglipConfig.preset("so400m-patch14-384").hidden_size
  assert c.model.reducer.args.bottleneck < width == 1152


def test_paper_token_budget_from_the_abstract_model():
  """No weights, no allocation: 32 frames of 27×27 become 8·7·7 = 392 tokens, 59.5× fewer."""
  c = config_lib.load(PAPER)
  budget = build.token_budget(build.model(c.model, 0), c)
  assert budget == {"frames": 32, "grid": [27, 27], "encoder_tokens": 32 * 729,
                    "visual_tokens": 392, "per_frame": 12.25, "ratio": 59.51}
  assert "392 visual tokens per video" in build.describe_budget(budget)
  c = config_lib.load(PAPER + ":tokens1440")  # the paper's ~1,440-token average
  config_lib.validate(c)
  budget = build.token_budget(build.model(c.model, 0), c)
  assert budget == {"frames": 116, "grid": [27, 27], "encoder_tokens": 116 * 729,
                    "visual_tokens": 29 * 49, "per_frame": 12.25, "ratio": 59.51}
  assert c.data.seq_len == 2048 + 29 * 49 - 392


@pytest.mark.parametrize("part", ["tokenizer", "encoder", "llm"])
def test_hub_id_without_network_or_cache_fails_in_one_line(part):
  c = config_lib.load(PAPER)
  missing = "longvid-tests/no-such-model"
  c.model.tokenizer = c.model.encoder.weights = c.model.llm.weights = missing
  load = {"tokenizer": runs.tokenizer, "encoder": runs.encoder_config,
          "llm": runs.llm_config}[part]
  t0 = time.time()
  with pytest.raises(FileNotFoundError) as e:
    load(c.model)
  assert time.time() - t0 < 30
  msg = str(e.value)
  assert "\n" not in msg and missing in msg and "local directory" in msg


def test_paper_recipe_loads_its_parts_from_local_directories(tmp_path):
  """The same config fields take a local directory: tiny random models saved by transformers."""
  llm = hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
  llm.save_pretrained(tmp_path / "qwen2")
  vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      image_size=28, patch_size=14))
  vision.save_pretrained(tmp_path / "siglip")
  c = config_lib.load(PAPER)
  c.model.llm.weights, c.model.llm.args = str(tmp_path / "qwen2"), {"dtype": "float32"}
  c.model.encoder.weights = str(tmp_path / "siglip")
  llm_cfg = runs.llm_config(c.model)
  assert (llm_cfg.family, llm_cfg.hidden_size, llm_cfg.num_layers) == ("qwen2", 64, 2)
  enc = runs.encoder_config(c.model)
  assert (enc.hidden_size, enc.image_size, enc.grid) == (32, 28, (2, 2))


def test_paper_datasets_variant_gives_each_stage_its_own_data():
  c = config_lib.load(PAPER + ":datasets")
  config_lib.validate(c)
  manifests = [str(config_lib.stage_data(c, c.stages[n], n).manifest) for n in c.recipe]
  assert len(set(manifests)) == 4
  sft = config_lib.stage_data(c, c.stages.sft, "sft")
  assert [pathlib.Path(p).name for p, _ in sft.manifest] == [
      "nextqa_{split}.jsonl", "perceptiontest_{split}.jsonl", "egoschema_{split}.jsonl"]
  assert all(config_lib.stage_data(c, c.stages[n], n).sampler == "avs" for n in c.recipe)


def test_configs_come_from_checkpoint_metadata_without_reading_weights(tmp_path, monkeypatch):
  """A run that stores its own params needs only the parts' configs: config.json, safetensors
  headers and GGUF metadata; reading, downloading or dequantising weights here is a bug."""
  from longvid_jax.interop import files, gguf
  llm = hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
  llm.save_pretrained(tmp_path / "qwen2")
  transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      image_size=28, patch_size=14)).save_pretrained(tmp_path / "siglip")

  def no_weights(*_):
    raise AssertionError("weights were read")

  monkeypatch.setattr(files.LazyTensors, "__getitem__", no_weights)
  monkeypatch.setattr(gguf, "read_tensors", no_weights)
  c = config_lib.load(PAPER)
  c.model.llm.weights, c.model.llm.args = str(tmp_path / "qwen2"), {"dtype": "float32"}
  c.model.encoder.weights = str(tmp_path / "siglip")
  assert runs.llm_config(c.model).hidden_size == 64
  assert runs.encoder_config(c.model).hidden_size == 32
  demo = config_lib.load(str(pathlib.Path(PAPER).with_name("paper.py")) + ":runlocal")
  assert runs.llm_config(demo.model).family == "llama"  # SmolLM2's GGUF metadata only


def test_local_recipe_fits_the_benchmarks_longest_examples(tmp_path, monkeypatch):
  """experiments/local.py: a 4-layer, 256-wide LLM from scratch that reads SmolLM2's tokenizer,
  4×4 tokens per AVS frame (128 per video), and every
  stage's examples of 60-second benchmark videos (the longest the recipe's data has: most shots
  and timestamps), each holding all five of a video's questions, fit its seq_len and
  max_targets, so no record is skipped as too long."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import longvideo, pipeline  # pylint: disable=g-import-not-at-top
  longvideo.make_benchmark(tmp_path / "data" / "local", num_videos=12, seconds=60, seed=5,
                           heldout=0.1, cut_scores=("train",), log=lambda *_: None)
  monkeypatch.chdir(tmp_path)  # the recipe names data/local relative to where it runs
  c = config_lib.load(str(ROOT / "experiments" / "local.py"))
  config_lib.validate(c)
  llm = runs.llm_config(c.model)
  assert (llm.num_layers, llm.hidden_size, c.model.llm.weights) == (4, 256, None)
  m = build.model(c.model, 0, llm_cfg=runs.llm_config(c.model))
  assert build.num_visual_tokens(m, c) == 128
  tok = runs.tokenizer(c.model)
  for name in c.recipe[1:]:
    s = c.stages[name]
    d = config_lib.stage_data(c, s, name)
    d.features = None  # frames instead of the cache: the text is the same
    src = pipeline.ManifestSource(d, "train", s.task, tok, 128)
    assert len(src) == 10  # one example per training video
    rng = np.random.default_rng(0)
    for i in range(len(src)):
      ex = src.example(i, rng)  # raises (too_long) past seq_len or max_targets
      assert (ex["target_index"] > 0).sum() >= 5 * 2  # five answers and their end markers


def test_an_llm_from_scratch_must_embed_every_tokenizer_id():
  """A randomly initialised LLM takes its vocabulary size from the config; one smaller than the
  tokenizer would index past its embedding table, so setup refuses it and names the fix."""
  c = config_lib.load(str(ROOT / "configs" / "demo.py"))
  c.model.llm.weights = None
  n = runs.tokenizer(c.model).vocab_size - 1  # the last id is the never-embedded placeholder
  c.model.llm.args = dict(c.model.llm.args or {}, vocab_size=n - 1)
  with pytest.raises(ValueError, match=rf"has {n} ids but the LLM embeds {n - 1}; set "
                     rf"model\.llm\.args\.vocab_size>={n}"):
    runs.setup(c, mesh=runs.single_device_mesh())
  c.model.llm.args = dict(c.model.llm.args, vocab_size=n)
  assert runs.setup(c, mesh=runs.single_device_mesh()).model.llm.cfg.vocab_size == n
