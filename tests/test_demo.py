"""The embedded default (configs/demo.py) with fewer steps: with the pretrained EfficientNet-Lite0
encoder and LLM, every stage, including projector alignment to the LLM, lowers its loss."""

import pathlib

import pytest

from longvid_jax import config as config_lib
from longvid_jax.train import runner

DEMO = str(pathlib.Path(__file__).parents[1] / "configs" / "demo.py")


@pytest.mark.slow
def test_demo_recipe_lowers_every_stage_loss(tmp_path):
  c = config_lib.load(DEMO)
  config_lib.override(c, [f"stages.{s}.{k}={v}" for s in c.recipe
                          for k, v in (("steps", 12), ("log_every", 1), ("checkpoint_every", 12))])
  summary = runner.run(c, tmp_path)
  assert [s["status"] for s in summary["stages"]] == ["done"] * 4
  for s in summary["stages"]:
    assert s["final_loss"] < s["first_loss"], s
