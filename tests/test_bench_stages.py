"""tools/bench_stages.py runs every text stage of a recipe and prints its table; the figures
themselves are not asserted (they belong to a quiet machine, not to a test)."""

from __future__ import annotations

import pytest

from test_eval import TINY  # pylint: disable=g-bad-import-order


@pytest.mark.slow
def test_bench_stages_times_each_text_stage(capsys):
  import bench_stages  # pylint: disable=g-import-not-at-top
  rows = bench_stages.main([TINY, "--steps", "1"])
  assert [r["stage"] for r in rows] == ["align", "joint", "sft"]
  for r in rows:
    assert min(r["frames"], r["features"], r["visual_frames"], r["visual_features"],
               r["data_s"]) > 0
    assert r["batch"] == 2 and r["seq_len"] in (72, 80)
  out = capsys.readouterr().out
  assert "ae_pretrain: no language-model loss; skipped" in out
  assert "| non-LLM share, frames | non-LLM share, cache |" in out


@pytest.mark.slow
def test_bench_stages_times_a_recipes_feature_cache(tmp_path, capsys):
  """A recipe that trains from the feature cache (data.features, after `longvid precompute`):
  the frames path still decodes, and the cache's read time gets its own column."""
  import bench_stages  # pylint: disable=g-import-not-at-top
  from longvid_jax import cli  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import longvideo  # pylint: disable=g-import-not-at-top
  longvideo.make_benchmark(tmp_path / "bench", num_videos=4, seconds=30, fps=4, size=32, seed=1,
                           heldout=0.25, log=lambda *_: None)
  sets = ["recipe=('ae_pretrain', 'sft')", "data.source=manifest", "data.sampler=uniform",
          f"data.manifest={tmp_path}/bench/{{split}}.jsonl", f"data.features={tmp_path}/feat"]
  args = [a for s in sets for a in ("--set", s)]
  assert cli.main(["precompute", TINY, *args]) == 0
  rows = bench_stages.main([TINY, "--steps", "1", *args])
  assert [r["stage"] for r in rows] == ["sft"]
  assert min(rows[0]["data_s"], rows[0]["data_cache_s"], rows[0]["features"]) > 0
  out = capsys.readouterr().out
  assert "| data s/batch, frames | data s/batch, cache |" in out
