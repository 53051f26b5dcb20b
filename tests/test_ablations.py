"""Every ablation variant is a valid config, at laptop size and full size: a variant that could
not start (e.g. 2×2×2 strides overflowing data.seq_len) fails here, not an hour into a table."""

import json
import pathlib

import pytest

from longvid_jax import config as config_lib

tables = config_lib.module(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
                           "ablations" / "tables.py")
BASE = tables.base("runlocal")
NAMES = [f"{t}/{v}" for t, vs in tables.variants(BASE).items() for v in vs]


@pytest.mark.parametrize("mode", ["runlocal", "", "local"])
def test_every_variant_validates(mode):
  for name in NAMES:
    c = tables.get_config(f"{name},{mode}" if mode else name)
    config_lib.validate(c)
    if name.startswith("table4/"):
      assert tuple(c.model.reducer.args.strides) == tuple(
          int(x) for x in name.split("/")[1].split("x"))


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# what each table may change: its ablated factor, and room in seq_len for more visual tokens
ALLOWED = {
    "table2": (r"data\.sampler",),
    # (local mode: a reducer that mixes frames states frame times in one sentence)
    "table3": (r"model\.reducer\..*", r"data\.seq_len", r"stages\.\w+\.seq_len",
               r"data\.timestamp_style"),
    "table4": (r"model\.reducer\.args\.strides", r"data\.seq_len", r"stages\.\w+\.seq_len",
               r"data\.timestamp_style"),
    "table5": (r"recipe", r"stages\.\w+\.trainable"),
    "table6": (r"model\.reducer\.args\.constraint",),
}


@pytest.mark.parametrize("mode", ["runlocal", "", "local"])
def test_variants_differ_from_the_base_only_in_the_ablated_factor(mode):
  import re
  base = _flat(tables.base(mode).to_dict())
  for name in NAMES:
    c = _flat(tables.get_config(f"{name},{mode}" if mode else name).to_dict())
    changed = {k for k in base.keys() | c.keys() if base.get(k) != c.get(k)}
    allowed = ALLOWED[name.split("/")[0]]
    stray = [k for k in changed if not any(re.fullmatch(p, k) for p in allowed)]
    assert not stray, (name, {k: (base.get(k), c.get(k)) for k in stray})


def test_table2_trains_and_evaluates_with_each_sampler_and_table5_trains_the_random_svc():
  for sampler in ("uniform", "avs", "fila", "longvu"):
    c = tables.get_config(f"table2/{sampler},runlocal")
    assert c.data.sampler == sampler
    config_lib.validate(c)
  c = tables.get_config("table5/random,runlocal")
  assert "ae_pretrain" not in c.recipe
  assert all("reducer" in c.stages[n].trainable for n in c.recipe)
  assert set(tables.PAPER) == set(tables.variants(tables.base("runlocal")))
  rows = tables.variants(tables.base("runlocal"))["table3"]
  assert set(rows) == {"svc", "avgpool3d", "avgpool3d_2x4x4", "perceiver"}


@pytest.mark.parametrize("mode,strides,tokens", [("runlocal", (4, 4, 4), 8),
                                                 ("local", (1, 2, 2), 128)])
def test_table3_compares_compressors_at_the_recipes_own_token_count(mode, strides, tokens):
  """The paper's recipes compress 64x (4x4x4); the local recipe 4x (1x2x2), where one token
  per frame region keeps the needle's frame apart. SVC, avgpool3d and the Perceiver each make
  as many tokens as the recipe."""
  base = tables.base(mode)
  assert tuple(base.model.reducer.args.strides) == strides
  for v in ("svc", "avgpool3d", "perceiver"):
    c = tables.get_config(f"table3/{v},{mode}")
    assert tables._tokens(c, c.model.reducer) == tokens, v  # pylint: disable=protected-access
  assert tables.get_config(f"table3/svc,{mode}").model.reducer.to_dict() == (
      base.model.reducer.to_dict())


def test_table_writer_shows_the_papers_finding_intervals_and_chance(tmp_path, capsys):
  import argparse  # pylint: disable=g-import-not-at-top
  import ablations  # pylint: disable=g-import-not-at-top
  def ev(acc, lo, hi):
    return {"accuracy": acc, "ci95": [lo, hi], "chance": 0.25, "visual_tokens_per_sample": 8,
            "seconds_per_sample": 0.1, "tasks": {
                "needle": {"accuracy": acc, "ci95": [lo, hi], "chance": 0.25},
                "ordering": {"accuracy": 0.5, "ci95": [0.4, 0.6], "chance": 0.5}}}
  results = {v: {"train_seconds": 12.0, "eval": {"long-video test": ev(a, a - 0.1, a + 0.1)}}
             for v, a in (("uniform", 0.4), ("avs", 0.6))}
  args = argparse.Namespace(steps=None, command="table2")
  ablations._write("table2", tmp_path, results, args)  # pylint: disable=protected-access
  text = (tmp_path / "table.md").read_text()
  assert "The paper finds: AVS > uniform at equal k." in text
  assert "| avs | 8 | 0.600 [0.50–0.70] (chance 0.25) | 0.600 |" in text
  assert "| variant | needle (chance 0.25) | ordering (chance 0.50) |" in text
  assert "| avs | 0.600 [0.50–0.70] | 0.500 [0.40–0.60] |" in text
  assert (tmp_path / "plot.png").stat().st_size > 0 and "### table2" in capsys.readouterr().out
  assert (tmp_path / "tasks.png").stat().st_size > 0
  assert not (tmp_path / "curves.png").exists()  # no variant was scored along its training


def test_table_writer_draws_each_variants_learning_curve(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  import ablations  # pylint: disable=g-import-not-at-top
  ev = {"accuracy": 0.5, "ci95": [0.4, 0.6], "chance": 0.3, "visual_tokens_per_sample": 8,
        "seconds_per_sample": 0.1, "tasks": {}}
  def pts(*accs):
    return [{"stage": "sft", "step": 10 * i, "total_step": 5 + 10 * i, "n": 100,
             "accuracy": a, "ci95": [a - 0.1, a + 0.1], "chance": 0.3} for i, a in enumerate(accs)]
  results = {"none": {"train_seconds": 1.0, "eval": {"val": ev}, "curve": pts(0.3, 0.45),
                      "schedule": {"ae_pretrain": 60, "sft": 350}},
             "vae": {"train_seconds": 1.0, "eval": {"val": ev}, "curve": pts(0.3, 0.4, 0.5),
                     "schedule": {"sft": 350}}}
  ablations._write("table6", tmp_path, results,  # pylint: disable=protected-access
                   argparse.Namespace(steps=None, command="table6"))
  text = (tmp_path / "table.md").read_text()
  assert "Accuracy on val against training steps (curves.png):" in text
  assert "| none | sft 0: 0.300 | sft 10: 0.450 |" in text
  assert "| vae | sft 0: 0.300 | sft 10: 0.400 | sft 20: 0.500 |" in text
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert "steps per stage: ae_pretrain 60 → sft 350; sft 350; command:" in text
  assert json.loads((tmp_path / "results.json").read_text())["vae"]["curve"][2]["accuracy"] == 0.5


def test_local_tables_keep_the_recipes_sampler_and_label_frames_only_where_tokens_allow():
  """On experiments/local.py, tables 3–6 sample as the recipe does (AVS); a variant whose tokens
  are per frame keeps each frame's time before its tokens, one that pools frames (temporal
  stride, Perceiver) states the times in a sentence, as validation demands."""
  base = tables.base("local")
  assert (base.data.sampler, base.data.timestamp_style) == ("avs", "interleaved")
  for name in NAMES:
    if name.startswith("table2/"):
      continue
    c = tables.get_config(f"{name},local")
    assert c.data.sampler == "avs", name
    # table3 compares at the recipe's 1x2x2: only the 2x4x4 pooling and the Perceiver mix frames
    pools = name in ("table3/avgpool3d_2x4x4", "table3/perceiver") or (
        name.startswith("table4/") and not name.startswith("table4/1x"))
    assert c.data.timestamp_style == ("sentence" if pools else "interleaved"), name
  with pytest.raises(ValueError, match="unknown mode 'laptop'"):
    tables.get_config("table3/svc,laptop")


def test_local_tables_score_the_recipes_val_split_and_any_test_manifests(tmp_path):
  import argparse  # pylint: disable=g-import-not-at-top
  import ablations  # pylint: disable=g-import-not-at-top
  c = tables.get_config("table6/residual,local")
  c.data.manifest = str(tmp_path / "local" / "{split}.jsonl")
  other = tmp_path / "local_s1" / "test.jsonl"
  args = argparse.Namespace(local=True, test=[str(other)])
  with pytest.raises(SystemExit, match=r"no manifest at .*local/val\.jsonl, .*local_s1"):
    ablations._datasets(tmp_path / "out", c, args)  # pylint: disable=protected-access
  for p in (tmp_path / "local" / "val.jsonl", other):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("")
  assert ablations._datasets(tmp_path / "out", c, args) == {  # pylint: disable=protected-access
      "long-video val": tmp_path / "local" / "val.jsonl", "test local_s1": other}


def test_a_finished_variant_keeps_its_train_time(tmp_path, monkeypatch):
  """A rerun of the table skips finished variants; their row still shows the time training took
  (from the run's summary), and a variant whose config another row already trained says so."""
  import json  # pylint: disable=g-import-not-at-top
  import ablations  # pylint: disable=g-import-not-at-top
  c = tables.get_config("table6/residual,local")
  done = tmp_path / "table6" / "residual"
  done.mkdir(parents=True)
  (done / "config.json").write_text(c.to_json_best_effort())
  (done / "summary.json").write_text(json.dumps({"stages": [
      {"name": "ae_pretrain", "seconds": 12.5, "final_loss": 7.9},
      {"name": "sft", "seconds": 1700.0, "final_loss": 0.35}]}))
  monkeypatch.chdir(tmp_path)  # `--out` given relative, as users type it
  for workdir, reused in ((pathlib.Path("table6/residual"), False),
                          (pathlib.Path("table3/svc"), True)):
    where, info = ablations._train(c, pathlib.Path("."), workdir, None)  # pylint: disable=protected-access
    assert where.absolute() == done and info["train_seconds"] == 1712.5
    assert info["stages"] == {"ae_pretrain": 7.9, "sft": 0.35}
    assert ("reused" in info) == reused
