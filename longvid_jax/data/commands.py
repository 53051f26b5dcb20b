"""`longvid convert-dataset` (a released dataset layout → a JSONL manifest of records) and
`longvid precompute` (a recipe's shot scores and encoder features, cached before training)."""

from __future__ import annotations

import collections
import sys


def register(subparsers) -> None:
  from longvid_jax.data.formats import FORMATS
  p = subparsers.add_parser("convert-dataset",
                            help="convert a dataset release to a JSONL manifest of records")
  p.add_argument("format", choices=FORMATS.names())
  p.add_argument("input", help="the release's annotation file, or its folder of per-task files")
  p.add_argument("out", help="output manifest (.jsonl)")
  p.add_argument("--video-root", help="folder the release's video files live in (default: "
                 "paths stay relative to the manifest)")
  p.add_argument("--answers", help="egoschema / activitynetqa: answers file (default: "
                 "subset_answers.json / <split>_a.json beside the questions)")
  p.add_argument("--video-map", help="nextqa: video id → path map (default: "
                 "map_vid_vidorID.json beside the CSV)")
  p.add_argument("--strict", action="store_true", help="stop at the first bad item")
  p.set_defaults(func=convert_command)

  p = subparsers.add_parser("precompute", help="score shots (and encode frames, with "
                            "data.features) for every video a recipe reads, into the caches")
  p.add_argument("config", help="config file, optionally with a variant: path.py[:arg]")
  p.add_argument("--manifest", action="append", help="these manifests instead of the recipe's "
                 "own (every stage's, all splits); e.g. a test set made with another seed")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
  p.set_defaults(func=precompute_command)


def convert_command(args) -> int:
  from longvid_jax.data import formats, records
  options = {"egoschema": {"answers": args.answers}, "activitynetqa": {"answers": args.answers},
             "nextqa": {"video_map": args.video_map}}
  bad: collections.Counter = collections.Counter()

  def good():
    for item in formats.convert(args.format, args.input, args.video_root,
                                **options.get(args.format, {})):
      if isinstance(item, ValueError):
        if args.strict:
          raise item
        print(f"skipping: {item}", file=sys.stderr)
        bad["bad item"] += 1
        continue
      yield item

  n = records.write_manifest(args.out, good())
  print(f"wrote {n} records to {args.out}" + (f" ({sum(bad.values())} bad items skipped)"
                                               if bad else ""))
  return 0


def _recipe_manifests(config) -> list[str]:
  """Every manifest file a recipe's stages and its evaluation read, each once."""
  import os  # pylint: disable=g-import-not-at-top
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
