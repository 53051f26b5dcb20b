"""Every peer reducer replaces the SVC in the recipe by a config change alone.

Align and joint are left out: SFT trains the projector too (and, by the untrained-reducer rule,
a reducer with weights), and each stage is a compile of its own."""

import math
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from longvid_jax import config as config_lib
from longvid_jax.train import runner

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")

# The tiny recipe's encoder gives tokens[4 frames, 4, 4, 32].
CASES = {
    "avgpool3d": {"strides": (2, 2, 2)},
    "bilinear2d": {"stride": 2, "newline": "row"},
    "perceiver": {"num_queries": 8, "depth": 1, "num_heads": 2},
    "fila": {"k": 2, "mode": "weighted"},
    "longvu": {"budget": 28, "low_res_stride": 2, "chunk": 2, "threshold": 0.9},
    "tome": {"target": 4, "over": "frame"},
}

pytestmark = pytest.mark.slow


def _params(path: pathlib.Path) -> dict:
  with ocp.StandardCheckpointer() as c:
    return traverse_util.flatten_dict(c.restore(path.absolute()), sep="/")


@pytest.mark.parametrize("name", list(CASES))
def test_reducer_runs_the_four_stage_recipe(name, tmp_path):
  c = config_lib.load(RECIPE)
  c.model.reducer.name = name
  c.model.reducer.args = CASES[name]
  c.data.seq_len = 112  # room for the least compressed (FiLA: 32 visual tokens)
  c.recipe = ("ae_pretrain", "sft")
  for s in c.stages.values():
    s.update(steps=2, log_every=1, checkpoint_every=2)
  summary = runner.run(c, tmp_path)
  stages = {s["name"]: s for s in summary["stages"]}
  # none of the peers is an autoencoder: their pretraining stage is skipped, with the reason
  assert stages["ae_pretrain"]["status"] == "skipped"
  assert "no reconstruction objective" in stages["ae_pretrain"]["note"]
  for stage in ("sft",):
    assert stages[stage]["status"] == "done" and stages[stage]["steps"] == 2
    assert math.isfinite(stages[stage]["first_loss"]), stages[stage]
    assert math.isfinite(stages[stage]["final_loss"]), stages[stage]

  before = _params(tmp_path / "1_ae_pretrain" / "params")
  after = _params(tmp_path / "2_sft" / "params")
  moved = {k.split("/")[0] for k in before if not np.array_equal(before[k], after[k])}
  assert "projector" in moved
  learned = [k for k in before if k.startswith("reducer/")]
  if learned:  # a reducer with weights and no objective of its own learns with the projector
    assert "reducer" in moved, learned
  if name == "longvu":  # the question reached the reducer: its query map got gradients
    assert any(not np.array_equal(before[k], after[k]) for k in learned if "query_proj" in k)
