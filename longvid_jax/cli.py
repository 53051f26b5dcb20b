"""The `longvid` command. Subcommands live next to the code they drive; each module listed in
COMMAND_MODULES exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import collections
import importlib
import logging
import os
import pathlib
import shlex
import sys

# transformers serves tokenizers here; its notice that PyTorch is absent is no concern of ours
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

COMMAND_MODULES = (
    "longvid_jax.cli",  # run, precompute
    "longvid_jax.evaluate.shot_commands",  # shots, sample
    "longvid_jax.interop.commands",  # llm-convert, llm-chat
    "longvid_jax.data.commands",  # convert-dataset
    "longvid_jax.evaluate.commands",  # make-benchmark, ask, eval
)


def _run(args) -> int:
  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.train import runner  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config)
  config_lib.override(config, args.set or [])
  workdir = pathlib.Path(args.workdir or pathlib.Path("workdir") /
                         pathlib.Path(args.config.partition(":")[0]).stem).absolute()
  summary = runner.run(config, workdir)
  finished = all(s["status"] in ("done", "skipped") for s in summary["stages"])
  if finished and config.eval.split:
    from longvid_jax.evaluate import heldout  # pylint: disable=g-import-not-at-top
    from longvid_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
    stages = [(s["name"], runner.stage_dir(workdir, i, s["name"]))
              for i, s in enumerate(summary["stages"])]
    summary["heldout"] = heldout.finish(config, workdir, stages)
    checkpoint.write_json_atomic(workdir / "summary.json", summary)
  print()
  for s in summary["stages"]:
    if s["status"] == "done":
      print(f"  {s['name']:<12} {s['status']:<8} {s['steps']:>5} steps  "
            f"loss {s['first_loss']:.4f} → {s['final_loss']:.4f}  {s['seconds']:.1f} s")
    else:
      print(f"  {s['name']:<12} {s['status']:<8} {s.get('note') or ''}")
  if "heldout" in summary:
    print()
    from longvid_jax.evaluate import benchmark  # pylint: disable=g-import-not-at-top
    held = summary["heldout"]
    print(benchmark.table(held, f"held-out {held['split']} questions, options ranked by "
                                "log-likelihood, on the video and on black frames"))
  print(f"\nsummary:     {workdir / 'summary.json'}")
  if "report" in summary.get("heldout", {}):
    print(f"report:      {summary['heldout']['report']}")
  print(f"params:      {summary['final_params']}")
  if finished:
    print("\nnext:")
    ex = heldout.example(summary["heldout"]) if "heldout" in summary else None
    if ex:
      print(f"  longvid ask {workdir} {ex[0]} {shlex.quote(ex[1])}")
      print(f"  longvid eval {workdir} {summary['heldout']['manifest']}")
    print(f"  longvid export {workdir} --to hf {workdir / 'export'}")
  print(f"  tensorboard --logdir {workdir}")
  return 0


def register(sub) -> None:
  p = sub.add_parser("run", help="run a recipe's training stages in order (resumable)")
  p.add_argument("config", help="config file, optionally with a variant: path.py[:arg]")
  p.add_argument("--workdir", help="output directory (default: workdir/<config name>)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config field, e.g. --set stages.sft.steps=10")
  p.set_defaults(func=_run)

  p = sub.add_parser("precompute", help="score shots (and encode frames, with data.features) "
                     "for every video a recipe reads, into the caches")
  p.add_argument("config", help="config file, optionally with a variant: path.py[:arg]")
  p.add_argument("--manifest", action="append", help="these manifests instead of the recipe's "
                 "own (every stage's, all splits); e.g. a test set made with another seed")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
  p.set_defaults(func=precompute_command)


def _recipe_manifests(config) -> list[str]:
  """Every manifest file a recipe's stages and its evaluation read, each once."""
  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import pipeline, records  # pylint: disable=g-import-not-at-top
  blocks = [config.data] + [config_lib.stage_data(config, config.stages[n], n)
                            for n in config.recipe]
  out: dict[str, None] = {}
  for d in blocks:
    if d.source != "manifest":
      continue
    for split in records.SPLITS:
      try:
        for paths, _ in pipeline.manifest_sources(d, split):
          out.update((p, None) for p in paths if os.path.exists(p))
      except (ValueError, FileNotFoundError):  # a split this data block does not have
        continue
  return list(out)


def precompute_command(args) -> int:
  """Shot scores go to the detector's cache (per video file); encoder features, when the config
  sets data.features, to that folder. Training and evaluation then read instead of computing."""
  import time  # pylint: disable=g-import-not-at-top

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import records, shots  # pylint: disable=g-import-not-at-top
  from longvid_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.sampling import samplers  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config)
  config_lib.override(config, args.set or [])
  d = config.data
  manifests = args.manifest or _recipe_manifests(config)
  if not manifests:
    print(f"{args.config} reads no manifest (data.source={d.source!r}); nothing to precompute",
          file=sys.stderr)
    return 2
  recs = {}
  bad: collections.Counter = collections.Counter()
  for path in manifests:
    for _, rec in records.read_manifest(path):
      if isinstance(rec, ValueError):
        bad["bad_manifest_line"] += 1
      else:
        recs.setdefault(rec.id, rec)
  needs = samplers.SAMPLERS.get(d.sampler).needs
  videos = sorted({r.video for r in recs.values() if not r.scores}) if "scores" in needs else []
  print(f"{len(recs)} records from {len(manifests)} manifests; shot scores for {len(videos)} "
        f"videos without `scores` ({d.sampler} sampler)")
  t0, frames = time.time(), 0
  for v in tqdm(videos, unit="video", desc="shots"):
    try:
      frames += len(shots.predict(v, weights=d.detector_weights, mode=d.detector_mode).single)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
      if isinstance(e, video_lib.BUGS):
        raise
      bad["shots:" + type(e).__name__] += 1
      print(f"skipping {v}: {e}", file=sys.stderr)
  if videos:
    print(f"shot scores: {len(videos)} videos, {frames} frames in {time.time() - t0:.1f} s "
          f"(cached under {shots.cache_root()})")
  if d.features:
    from longvid_jax import runs  # pylint: disable=g-import-not-at-top
    from longvid_jax.data import features  # pylint: disable=g-import-not-at-top
    t0 = time.time()
    s = runs.setup(config)
    with s.scope():
      params = s.init_params()
      encode = s.encoder_fn(params)
      stats = features.precompute(tqdm(list(recs.values()), unit="record", desc="features"), d,
                                  encode, s.encoder_fingerprint(params), d.features,
                                  describe=(s.describer(params) if "features" in needs
                                            else None))
    print(f"features: {stats['written']} written, {stats['cached']} already cached, skipped "
          f"{stats['skipped'] or 'none'} in {time.time() - t0:.1f} s (under {d.features})")
  if bad:
    print(f"skipped: {dict(bad)}")
  return 0


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="longvid", description=__doc__.splitlines()[0])
  ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  sub = ap.add_subparsers(dest="command", required=True)
  for name in COMMAND_MODULES:
    importlib.import_module(name).register(sub)
  return ap


def _persistent_compilation_cache() -> None:
  """Compiled programs are kept under the user's cache dir, so a second `ask`, `eval` or a
  resumed run does not compile again (JAX_COMPILATION_CACHE_DIR, if set, wins)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax  # pylint: disable=g-import-not-at-top
  from longvid_jax import assets  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(assets.cache_dir() / "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  _persistent_compilation_cache()
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
  for noisy in ("absl", "jax._src", "orbax", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    return args.func(args)
  except (ValueError, KeyError, OSError, FloatingPointError) as e:  # OSError: files, storage
    print(f"longvid {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
