"""Per-stage data: a stage names the fields of config.data it changes (its own manifest, mixture,
sampler, ...); the rest and the model's input shape stay the run's."""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import pytest

from longvid_jax import config as config_lib
from longvid_jax.data import pipeline, records
from longvid_jax.train import runner
from test_pipeline import CharTok  # pylint: disable=g-bad-import-order
from test_video import _write_mp4  # pylint: disable=g-bad-import-order

RECIPE = str(pathlib.Path(__file__).parent / "data" / "tiny_recipe.py")


def _manifest(root: pathlib.Path, name: str, n: int) -> pathlib.Path:
  recs = []
  for j in range(n):
    video = root / f"{name}{j}.mp4"
    if not video.exists():
      _write_mp4(video, n=10, fps=10, w=32, h=32, gop=4, bframes=0)
    recs.append(records.Record(id=f"{name}/{j}", video=video.name,
                               turns=((f"What is {name} {j}?", f"It is {name}."),)))
  path = root / f"{name}.jsonl"
  records.write_manifest(path, recs)
  return path


def test_stage_data_fields_are_set_typed_and_validated():
  c = config_lib.load(RECIPE)
  config_lib.override(c, ["stages.sft.data.source=manifest", "stages.sft.data.manifest=q.jsonl",
                          "stages.sft.data.sampler_args={'window': 3}"])
  d = config_lib.stage_data(c, c.stages.sft)
  assert (d.source, d.manifest, dict(d.sampler_args)) == ("manifest", "q.jsonl", {"window": 3})
  assert d.num_frames == c.data.num_frames and c.data.source == "synthetic"
  assert config_lib.stage_data(c, c.stages.align).source == "synthetic"
  config_lib.validate(c)
  with pytest.raises(KeyError, match=r"stages\.sft\.data\.bogus.*no field 'bogus'"):
    config_lib.override(c, ["stages.sft.data.bogus=1"])
  for item, match in [
      ("stages.sft.data.num_frames=8", r"stages\.sft\.data\.num_frames.*model's input"),
      ("stages.sft.data.seq_len=90", r"stages\.sft\.seq_len"),
      ("stages.sft.data.sampler='nope'", r"stages\.sft\.data\.sampler 'nope'"),
      ("stages.sft.data.qa_turns='two'", r"stages\.sft\.data\.qa_turns='two' must be an integer"),
      ("stages.sft.data.manifest=[('a.jsonl', -1)]", r"stages\.sft\.data\.manifest.*positive"),
      ("stages.sft.data.source='web'", r"stages\.sft\.data\.source='web'")]:
    bad = config_lib.load(RECIPE)
    config_lib.override(bad, [item])
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad)


def test_mixture_fills_each_manifest_share_of_an_epoch(tmp_path):
  a, b = _manifest(tmp_path, "a", 6), _manifest(tmp_path, "b", 2)
  cfg = config_lib.data(source="manifest", manifest=[(str(a), 1.0), (str(b), 3.0)],
                        num_frames=4, image_size=16, seq_len=200)
  src = pipeline.ManifestSource(cfg, "train", "qa", CharTok(), 4)
  names = collections.Counter(src.records[i].id.split("/")[0] for i in src.pool)
  assert names == {"a": 2, "b": 6}  # 8 records an epoch, a quarter from a
  assert len({src.records[i].id for i in src.pool if src.records[i].id[0] == "b"}) == 2
  ds = pipeline.dataset(cfg, "qa", CharTok(), 4, batch_size=4, seed=0)
  ids = np.concatenate([ds[i]["record_id"] for i in range(4)])  # two epochs
  assert sum(i.startswith("b/") for i in ids.tolist()) == 12


@pytest.mark.slow
def test_three_stages_read_three_manifests(tmp_path, monkeypatch):
  """Each stage of a run trains on its own manifest's records and on nothing else."""
  c = config_lib.load(RECIPE)
  c.recipe = ("align", "joint", "sft")
  for name in c.recipe:
    path = _manifest(tmp_path, name, 3)
    c.stages[name].update(steps=2, checkpoint_every=2)
    c.stages[name].data = {"source": "manifest", "manifest": str(path)}
  c.stages.align.seq_len = None
  seen = collections.defaultdict(set)
  example = pipeline.ManifestSource.example

  def spy(self, i, rng):
    seen[pathlib.Path(self.cfg.manifest).stem].add(self.records[i].id)
    return example(self, i, rng)

  monkeypatch.setattr(pipeline.ManifestSource, "example", spy)
  summary = runner.run(c, tmp_path / "run")
  assert [s["status"] for s in summary["stages"]] == ["done"] * 3
  assert set(seen) == {"align", "joint", "sft"}
  for name, ids in seen.items():
    assert ids and all(i.startswith(name + "/") for i in ids), (name, ids)
