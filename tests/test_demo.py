"""The embedded default (configs/demo.py) with fewer steps: with the pretrained EfficientNet-Lite0
encoder and LLM, each stage it runs, projector alignment to the LLM included, lowers its loss."""

import pathlib

import pytest

from longvid_jax import config as config_lib
from longvid_jax.train import runner

DEMO = str(pathlib.Path(__file__).parents[1] / "configs" / "demo.py")


@pytest.mark.slow
def test_demo_recipe_lowers_every_stage_loss(tmp_path):
  """The recipe's models and learning rates; the autoencoder keeps its 40 steps (its loss falls
  slowly and its steps are cheap), the LLM stages take 10 steps of 2 examples and SFT two-turn
  conversations. The joint stage is left out: it trains what SFT trains on the captions align
  reads, and each LLM stage costs a compile and a 1.6 GB checkpoint."""
  c = config_lib.load(DEMO)
  c.recipe = ("ae_pretrain", "align", "sft")
  sets = [f"stages.{s}.log_every=1" for s in c.recipe] + ["stages.ae_pretrain.checkpoint_every=40"]
  sets += [f"stages.{s}.{k}={v}" for s in ("align", "sft")
           for k, v in (("steps", 10), ("batch_size", 2), ("checkpoint_every", 10))]
  sets += ["data.qa_turns=2", "data.seq_len=64"]
  config_lib.override(c, sets)
  summary = runner.run(c, tmp_path)
  assert [s["status"] for s in summary["stages"]] == ["done"] * 3
  for s in summary["stages"]:
    assert s["final_loss"] < s["first_loss"], s
