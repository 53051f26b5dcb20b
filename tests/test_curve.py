"""Learning curves: a run keeps params snapshots, and `longvid eval --curve` scores each of them
and every stage's final params on one step axis."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longvid_jax import cli
from longvid_jax import config as config_lib
from longvid_jax.data import records
from longvid_jax.evaluate import benchmark, curve
from longvid_jax.evaluate.predictor import Predictor
from longvid_jax.train import runner
from test_eval import TINY, manifest  # noqa: F401  pylint: disable=unused-import


@pytest.mark.slow
def test_snapshots_and_the_curve_of_a_run(tmp_path, manifest):  # noqa: F811
  c = config_lib.load(TINY)
  c.recipe = ("align", "sft")
  for name in c.recipe:
    c.stages[name].update(steps=4, checkpoint_every=4, snapshot_every=2)
  c.stages.align.seq_len = None
  run = tmp_path / "run"
  runner.run(c, run)
  assert sorted(p.name for p in (run / "1_align" / "snapshots").iterdir()) == ["0000002"]
  pts = curve.points(run)
  assert [(p.stage, p.step, p.total_step) for p in pts] == [
      ("align", 2, 2), ("align", 4, 4), ("sft", 2, 6), ("sft", 4, 8)]
  assert pts[-1].params == run / "2_sft" / "params"

  out = tmp_path / "curve"
  assert cli.main(["eval", str(run), str(manifest), "--curve", "--limit", "5",
                   "--out", str(out)]) == 0
  got = json.loads(out.with_suffix(".json").read_text())["points"]
  assert [r["total_step"] for r in got] == [2, 4, 6, 8] and out.with_suffix(".png").stat().st_size
  # the ablation driver's --curve is the same scoring, per variant
  import ablations  # pylint: disable=g-import-not-at-top
  driver = ablations._curve(run, manifest, 5)  # pylint: disable=protected-access
  assert [(r["total_step"], r["accuracy"]) for r in driver] == [
      (r["total_step"], r["accuracy"]) for r in got]
  recs = [r for _, r in records.read_manifest(manifest)]
  # each point is what a fresh Predictor on that params folder scores
  r0 = recs[0]
  swapped = Predictor(run)
  scores = []
  for p, row in zip(pts, got):
    fresh = Predictor(p.params)
    res = benchmark.evaluate(recs, benchmark.ModelAnswerer(fresh, "loglik"), 5)["summary"]
    assert (res["accuracy"], res["n"]) == (row["accuracy"], row["n"])
    swapped.use_params(p.params)
    clip = fresh.clip(r0.video)
    want = fresh.loglik(fresh.features(clip), r0.question, r0.options)
    np.testing.assert_allclose(swapped.loglik(swapped.features(clip), r0.question, r0.options),
                               want, rtol=1e-5, atol=1e-5)
    scores.append(want)
  assert not np.allclose(scores[0], scores[-1])  # training moved the answer
  c.stages.sft.snapshot_every = -1
  with pytest.raises(ValueError, match=r"stages\.sft\.snapshot_every=-1 must be >= 0"):
    config_lib.validate(c)
