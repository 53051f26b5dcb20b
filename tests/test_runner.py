"""The four-stage runner end to end: results, frozen groups, skipping; kills, preemption and
damaged files, each ending bit-identical to one uninterrupted run."""

import json
import logging
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from longvid_jax import config as config_lib
from longvid_jax.train import metrics as metrics_lib
from longvid_jax.train import runner

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")
STAGES = ["1_ae_pretrain", "2_align", "3_joint", "4_sft"]
STEPS = 8  # per stage in the tiny recipe, a checkpoint every 2
TRAINED = {"1_ae_pretrain": ("reducer",), "2_align": ("projector",),
           "3_joint": ("projector", "llm"), "4_sft": ("projector", "llm")}

pytestmark = pytest.mark.slow


def _params(path: pathlib.Path) -> dict:
  with ocp.StandardCheckpointer() as c:
    return traverse_util.flatten_dict(c.restore(path.absolute()), sep="/")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  logger = logging.getLogger("longvid_jax")
  level = logger.level
  logger.setLevel(logging.INFO)  # run.log gets the stage lines, as under the CLI
  try:
    summary = runner.run(config_lib.load(RECIPE), workdir)
  finally:
    logger.setLevel(level)
  return workdir, summary


def test_all_stages_finish_with_lower_loss(finished):
  workdir, summary = finished
  on_disk = json.loads((workdir / "summary.json").read_text())
  assert on_disk["stages"] == summary["stages"]
  assert [s["name"] for s in summary["stages"]] == ["ae_pretrain", "align", "joint", "sft"]
  for s in summary["stages"]:
    assert s["status"] == "done" and s["steps"] == STEPS
    # Projector alignment to a *random* LLM has nothing to align to; the demo test checks it
    # decreases with the real pretrained LLM.
    if s["name"] != "align":
      assert s["final_loss"] < s["first_loss"], s
    assert s["seconds"] > 0
  log = (workdir / "run.log").read_text()  # each LM stage's own example length, or data's
  assert re.search(r"stage 2/4 align: 8 steps of 72-token examples, training projector", log)
  assert re.search(r"stage 4/4 sft: 8 steps of 80-token examples, training projector, llm", log)
  assert re.search(r"stage 1/4 ae_pretrain: 8 steps, training reducer", log)
  for stage in STAGES:
    rows = [json.loads(r) for r in (workdir / stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert list((workdir / stage / "tensorboard").glob("events.out.tfevents.*"))


def test_each_stage_trains_only_its_groups(finished):
  workdir, _ = finished
  prev = None
  for stage in STAGES:
    cur = _params(workdir / stage / "params")
    if prev is not None:
      for key, value in cur.items():
        trained = key.startswith(TRAINED[stage])
        same = np.array_equal(np.asarray(value), np.asarray(prev[key]))
        assert same != trained, f"{stage}: {key} {'unchanged' if same else 'changed'}"
    prev = cur


def test_rerun_skips_finished_stages(finished):
  workdir, summary = finished
  before = {s: (workdir / s / "metrics.jsonl").read_text() for s in STAGES}
  t = time.time()
  again = runner.run(config_lib.load(RECIPE), workdir)
  assert again["stages"] == summary["stages"]
  assert {s: (workdir / s / "metrics.jsonl").read_text() for s in STAGES} == before
  assert time.time() - t < 60


def _cli(workdir, *extra):
  return [sys.executable, "-m", "longvid_jax.cli", "run", RECIPE, "--workdir", str(workdir),
          *extra]


def _rows(path: pathlib.Path) -> list[dict]:
  return [json.loads(r) for r in path.read_text().splitlines()]


def _assert_same_run(workdir: pathlib.Path, done_dir: pathlib.Path, stages=STAGES):
  """Bit-identical params and per-step losses to the uninterrupted run."""
  for stage in stages:
    want = [(r["step"], r["loss"]) for r in _rows(done_dir / stage / "metrics.jsonl")]
    assert [(r["step"], r["loss"]) for r in _rows(workdir / stage / "metrics.jsonl")] == want
    a, b = _params(workdir / stage / "params"), _params(done_dir / stage / "params")
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{stage} {k}")


def _interrupt_at(workdir, stage, step, sig, log) -> subprocess.Popen:
  """Start the run; once `stage` has logged `step`, send `sig` (whatever it is doing by then)."""
  with open(log, "w") as err:
    proc = subprocess.Popen(_cli(workdir), stdout=subprocess.DEVNULL, stderr=err)
  metrics = workdir / stage / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(r["step"] >= step for r in metrics_lib.read_metrics(metrics)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, pathlib.Path(log).read_text()[-3000:]
  proc.send_signal(sig)
  proc.wait(timeout=600)
  return proc


def test_killed_and_preempted_run_matches_uninterrupted_run(finished, tmp_path):
  """SIGKILL at a random step of stage 1, SIGTERM at one of stage 3, then one clean rerun.
  (Each start costs a process and a retrace, so one of each; resuming stage 4 from its own
  checkpoint is in the next test.)"""
  done_dir, _ = finished
  workdir = tmp_path / "killed"
  rng = random.Random(7)
  for stage, sig in (("1_ae_pretrain", signal.SIGKILL), ("3_joint", signal.SIGTERM)):
    log = tmp_path / f"{stage}.log"
    proc = _interrupt_at(workdir, stage, rng.randint(1, STEPS - 1), sig, log)
    if sig == signal.SIGKILL:
      assert proc.returncode == -signal.SIGKILL
      continue
    # preemption: a checkpoint at the step named in the log, exit code 0, stage not done
    assert proc.returncode == 0, log.read_text()[-3000:]
    m = re.search(r"stage (\w+): preempted at step (\d+); rerun the same command to resume",
                  log.read_text())
    assert m, log.read_text()[-3000:]
    stage = next(s for s in STAGES if s.endswith("_" + m.group(1)))  # normally 3_joint
    assert (workdir / stage / "checkpoints" / m.group(2)).is_dir()
    assert not (workdir / stage / "DONE.json").exists()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["preempted"] and summary["stages"][-1]["status"] == "preempted"

  out = subprocess.run(_cli(workdir), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming from step" in (workdir / "run.log").read_text()
  assert not json.loads((workdir / "summary.json").read_text())["preempted"]
  _assert_same_run(workdir, done_dir)


def test_stage_chain_survives_kills_between_stages_and_damaged_files(finished, tmp_path, caplog):
  caplog.set_level(logging.INFO)  # run.log gets the "resuming" line
  done_dir, _ = finished
  workdir = tmp_path / "w"
  shutil.copytree(done_dir, workdir)
  # killed after stage 2 wrote DONE.json, before stage 3 began
  shutil.rmtree(workdir / "3_joint")
  # stage 4 killed while writing params/ (so no DONE.json), and its newest checkpoint garbled
  (workdir / "4_sft" / "DONE.json").unlink()
  shutil.rmtree(workdir / "4_sft" / "params")
  for f in (workdir / "4_sft" / "checkpoints" / str(STEPS) / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      data = bytearray(f.read_bytes())
      data[len(data) // 2:len(data) // 2 + 8] = b"\xa5" * 8
      f.write_bytes(bytes(data))
  summary = runner.run(config_lib.load(RECIPE), workdir)
  assert [s["status"] for s in summary["stages"]] == ["done"] * 4
  log = (workdir / "run.log").read_text()
  assert re.search(rf"checkpoint .*4_sft/checkpoints/{STEPS} is unreadable.*resuming from step "
                   rf"{STEPS - 2}", log)
  assert (workdir / "4_sft" / "corrupt" / str(STEPS)).is_dir()
  _assert_same_run(workdir, done_dir, ["3_joint", "4_sft"])


def test_bad_config_values_fail_before_compiling(tmp_path):
  c = config_lib.load(RECIPE)
  c.stages.sft.lr = -1.0
  with pytest.raises(ValueError, match="stages.sft.lr"):
    runner.run(c, tmp_path)
  c = config_lib.load(RECIPE)
  config_lib.override(c, ["stages.align.steps=0"])
  with pytest.raises(ValueError, match="stages.align.steps"):
    runner.run(c, tmp_path)
  with pytest.raises(KeyError, match="no field"):
    config_lib.override(c, ["stages.align.stepz=3"])


def test_run_command_scores_the_heldout_split_once(finished, tmp_path, capsys):
  """After the last stage `longvid run` scores the final params on the held-out split (and on
  black frames), draws report.png and prints the next commands; a rerun reuses the scores."""
  from longvid_jax import cli
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  assert cli.main(["run", RECIPE, "--workdir", str(workdir), "--set", "eval.split=test"]) == 0
  out = capsys.readouterr().out
  summary = json.loads((workdir / "summary.json").read_text())
  held = summary["heldout"]
  n_videos = 2  # tiny recipe: 40 videos, 5% held out for test
  assert held["split"] == "test" and held["n"] >= n_videos * 2
  assert set(held["tasks"]) == {"synthetic/background", "synthetic/color", "synthetic/shape"}
  for d in [held, *held["tasks"].values()]:
    lo, hi = d["ci95"]
    assert 0 <= lo <= d["accuracy"] <= hi <= 1 and 0 <= d["blank_accuracy"] <= 1
    assert 0.2 < d["chance"] < 0.5
  assert sum(d["n"] for d in held["tasks"].values()) == held["n"]
  rows = json.loads((workdir / "eval" / "heldout_test.json").read_text())
  assert len(rows["rows"]) == len(rows["blank_rows"]) == held["n"]
  assert held["accuracy"] == np.mean([r["correct"] for r in rows["rows"]])
  import matplotlib.image
  picture = matplotlib.image.imread(workdir / "report.png")
  assert picture.shape[0] > 500 and picture.shape[1] > 1000
  # the held-out table: accuracy, interval, blank frames, chance
  assert re.search(r"\| \*\*all\*\* \| \d+ \| [01]\.\d{3} \| [01]\.\d\d–[01]\.\d\d \| "
                   r"[01]\.\d{3} \| 0\.\d{3} \|", out)
  assert f"longvid ask {workdir} {workdir / 'heldout' / 'videos'}" in out
  assert f"longvid eval {workdir} {held['manifest']}" in out
  assert f"longvid export {workdir} --to hf" in out and "tensorboard --logdir" in out
  stamp = (workdir / "eval" / "heldout_test.json").stat().st_mtime_ns
  assert cli.main(["run", RECIPE, "--workdir", str(workdir), "--set", "eval.split=test"]) == 0
  assert (workdir / "eval" / "heldout_test.json").stat().st_mtime_ns == stamp
  assert json.loads((workdir / "summary.json").read_text())["heldout"] == held


def test_a_finished_run_opens_without_its_starting_weights(finished, monkeypatch):
  """The run records its resolved LLM shape, so `ask`/`eval`/`export` build the model from the
  run alone: no look at (or download of) the checkpoint it started from."""
  from longvid_jax import runs
  from longvid_jax.models.llm import LLMConfig
  workdir, _ = finished
  stored = json.loads((workdir / runs.LLM_CONFIG).read_text())
  monkeypatch.setattr(runs, "_llm_config", lambda source: pytest.fail(f"read {source}"))
  run = runs.open_run(workdir)
  assert run.config.model.llm.weights is None
  assert runs.llm_config(run.config.model) == LLMConfig(**stored)
  assert LLMConfig(**stored) == runs.llm_config(config_lib.load(RECIPE).model)
