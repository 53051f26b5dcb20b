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
