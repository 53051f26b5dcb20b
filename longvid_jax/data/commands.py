"""`longvid convert-dataset`: a released dataset layout → a JSONL manifest of records."""

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
