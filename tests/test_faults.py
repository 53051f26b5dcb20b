"""Fault injection: failing and killed checkpoint writers, damaged checkpoints, non-finite steps.

(Kills, SIGTERM and damage inside a full recipe run are in test_runner.py, next to the
uninterrupted run they are compared with.)
"""

import errno
import json
import logging
import pathlib
import re
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from longvid_jax import config as config_lib
from longvid_jax.data import pipeline
from longvid_jax.train import checkpoint, runner

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")
STATE = {"w": jnp.arange(5000, dtype=jnp.float32), "b": jnp.ones((3, 4), jnp.bfloat16),
         "step": jnp.zeros((), jnp.int32)}


def _saved(directory: pathlib.Path):
  """A checkpoint directory with good saves at steps 2 and 4 (state + 2 and state + 4)."""
  mngr = checkpoint.manager(directory, every=2)
  for step in (2, 4):
    checkpoint.save(mngr, step, {k: v + step for k, v in STATE.items()}, {"start": 0, "i": step})
    checkpoint.wait(mngr)
  return mngr


def _restores(mngr, step):
  state, data = checkpoint.restore(mngr, STATE, step)
  assert data == {"start": 0, "i": step}
  np.testing.assert_array_equal(state["w"], STATE["w"] + step)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  mngr = _saved(tmp_path / "ckpt")

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  with monkeypatch.context() as m:
    m.setattr(ocp.StandardCheckpointHandler, "async_save", full_disk)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"step 6 under .*ckpt failed .*No space left.*\(step 4\) is kept"):
      checkpoint.save(mngr, 6, STATE, {"start": 0, "i": 6})
  mngr = checkpoint.manager(tmp_path / "ckpt", every=2)  # as a rerun sees it
  assert mngr.all_steps() == [2, 4]
  _restores(mngr, 4)
  checkpoint.save(mngr, 6, {k: v + 6 for k, v in STATE.items()}, {"start": 0, "i": 6})
  checkpoint.wait(mngr)
  _restores(mngr, 6)


def test_killed_writer_leftovers_are_ignored(tmp_path):
  _saved(tmp_path / "ckpt")
  partial = tmp_path / "ckpt" / "6.orbax-checkpoint-tmp-1234567890"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text('{"tree_metadata": {"w"')  # cut mid-write
  mngr = checkpoint.manager(tmp_path / "ckpt", every=2)
  assert mngr.latest_step() == 4
  _restores(mngr, 4)
  checkpoint.save(mngr, 6, {k: v + 6 for k, v in STATE.items()}, {"start": 0, "i": 6})
  checkpoint.wait(mngr)
  _restores(mngr, 6)


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _truncate(p):
  p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])


def _garble(p):
  b = bytearray(p.read_bytes())
  b[len(b) // 2:len(b) // 2 + 8] = b"\xa5" * 8
  p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [
    lambda s: _truncate(_largest_array_file(s)),
    lambda s: _garble(_largest_array_file(s)),  # decodes without error: caught by the fingerprint
    lambda s: _garble(s / "state" / "_METADATA"),
    lambda s: (s / "meta" / "metadata").write_text("{"),
    lambda s: shutil.rmtree(s / "state"),
], ids=["truncated", "garbled_array", "garbled_metadata", "garbled_meta_json", "missing_state"])
def test_damaged_checkpoint_falls_back_to_the_previous_step(tmp_path, damage, caplog):
  _saved(tmp_path / "ckpt")
  damage(tmp_path / "ckpt" / "4")
  mngr = checkpoint.manager(tmp_path / "ckpt", every=2)
  with pytest.raises(checkpoint.CheckpointCorrupt, match=r"checkpoint .*ckpt/4 is unreadable"):
    checkpoint.restore(mngr, STATE, 4)
  with caplog.at_level(logging.WARNING):
    step, state, data = checkpoint.restore_newest_readable(mngr, STATE)
  assert step == 2 and data == {"start": 0, "i": 2}
  np.testing.assert_array_equal(state["w"], STATE["w"] + 2)
  assert re.search(r"checkpoint .*ckpt/4 is unreadable", caplog.text), caplog.text
  assert (tmp_path / "corrupt" / "4").is_dir() and mngr.all_steps() == [2]
  checkpoint.save(mngr, 4, {k: v + 4 for k, v in STATE.items()}, {"start": 0, "i": 4})
  checkpoint.wait(mngr)
  _restores(mngr, 4)


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
  _saved(tmp_path / "ckpt")
  other = {**STATE, "w": jnp.zeros(7)}  # e.g. the model config changed since
  with pytest.raises(checkpoint.CheckpointCorrupt, match=r"no checkpoint under .*ckpt reads back"):
    checkpoint.restore_newest_readable(checkpoint.manager(tmp_path / "ckpt", every=2), other)
  assert checkpoint.manager(tmp_path / "ckpt", every=2).all_steps() == [2, 4]


def _one_stage(**stage):
  c = config_lib.load(RECIPE)
  c.recipe = ("ae_pretrain",)
  c.stages.ae_pretrain.update(steps=4, log_every=2, checkpoint_every=2, **stage)
  return c


@pytest.mark.slow
def test_non_finite_step_stops_or_is_skipped(tmp_path, caplog):
  caplog.set_level(logging.INFO)  # run.log gets the "resuming" line
  stage = tmp_path / "1_ae_pretrain"
  # step 3 is neither logged nor checkpointed: the per-step flag must still catch it; the
  # batch's ids are the pipeline's own (synthetic:<data seed>:<video id>)
  with pytest.raises(FloatingPointError, match=r"at step 3 \(records \['synthetic:0:\d+', "
                     r"'synthetic:0:\d+'\]\).*checkpoint \(step 2\) is kept"):
    runner.run(_one_stage(debug_nan_steps=(3,)), tmp_path)
  assert max(int(p.name) for p in (stage / "checkpoints").iterdir()) == 2  # nothing new
  assert not (stage / "DONE.json").exists()

  summary = runner.run(_one_stage(debug_nan_steps=(3,), nan_policy="skip"), tmp_path)
  assert summary["stages"][0]["status"] == "done"
  log = (tmp_path / "run.log").read_text()
  assert "resuming from step 2" in log and "non-finite loss or gradients at step 3" in log
  rows = [json.loads(r) for r in (stage / "metrics.jsonl").read_text().splitlines()]
  # the first step after a resume is always logged: step 3's loss is written as null
  assert [(r["step"], r["skipped"], r["loss"] is None) for r in rows] == [
      (1, 0, False), (2, 0, False), (3, 1, True), (4, 1, False)]
  assert np.isfinite(summary["stages"][0]["final_loss"])


@pytest.mark.slow
def test_non_finite_step_before_any_checkpoint(tmp_path):
  """The stop names the step and the batch's records, and says there is no checkpoint yet."""
  c = _one_stage(debug_nan_steps=(1,))
  s = c.stages.ae_pretrain
  want = pipeline.dataset(c.data, s.task, None, 0, s.batch_size, seed=c.seed)[0]["record_id"]
  with pytest.raises(FloatingPointError) as e:
    runner.run(c, tmp_path)
  msg = str(e.value)
  assert "at step 1 (records [" in msg
  assert all(f"'{r}'" in msg for r in want.tolist()) and "'synthetic:0:" in msg
  assert "there is no checkpoint yet" in msg and "step None" not in msg
