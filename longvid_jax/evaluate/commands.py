"""`longvid make-benchmark`, `longvid ask` and `longvid eval`."""

from __future__ import annotations

import json
import pathlib
import sys

BASELINES = ("oracle", "prior")


def register(subparsers) -> None:
  p = subparsers.add_parser("make-benchmark", help="write the offline long-video QA benchmark")
  p.add_argument("out_dir")
  p.add_argument("--videos", type=int, default=30, help="videos over all splits")
  p.add_argument("--seconds", type=float, default=60.0, help="shortest video length")
  p.add_argument("--max-seconds", type=float, help="longest video length (default: --seconds)")
  p.add_argument("--fps", type=float, default=4.0)
  p.add_argument("--size", type=int, default=64, help="frame side in pixels")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--heldout", type=float, default=0.2, help="fraction of videos in val and test")
  p.add_argument("--cut-scores", nargs="+", default=[], choices=["train", "val", "test"],
                 metavar="SPLIT", help="these splits' records carry the generator's cuts as "
                 "shot scores (no detector pass when training on them)")
  p.add_argument("--train-question-sets", type=int, default=1, metavar="N",
                 help="ask each training video N sets of questions (every task again, at "
                      "other moments, pairs and shapes; repeats dropped); val and test keep one")
  p.add_argument("--from-config", metavar="CONFIG",
                 help="instead: export the held-out synthetic videos of this training "
                      "config, or of the config a run workdir trained with")
  p.add_argument("--split", default="test", help="with --from-config: val or test")
  p.add_argument("--limit", type=int, help="with --from-config: at most this many videos")
  p.set_defaults(func=make_benchmark_command)

  p = subparsers.add_parser("ask", help="answer a question about a video with a trained run")
  p.add_argument("checkpoint", help="a run's workdir, or a params folder inside it")
  p.add_argument("video")
  p.add_argument("question")
  p.add_argument("--options", nargs="+", help="multiple choice: rank these by likelihood")
  p.add_argument("--sampler", help="frame sampler (default: the run's data.sampler or uniform)")
  p.add_argument("--frames", type=int, help="frame budget (default: the run's data.num_frames)")
  p.add_argument("--max-new-tokens", type=int, default=48)
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=ask_command)

  p = subparsers.add_parser("eval", help="accuracy of a run on a manifest of multiple-choice "
                            "and open-ended questions")
  p.add_argument("checkpoint", help="a run's workdir or params folder; or a baseline: "
                 "'oracle' (ground truth of the sampled frames) or 'prior' (needs --train)")
  p.add_argument("dataset", help="a Record manifest (.jsonl)")
  p.add_argument("--mode", default="loglik", choices=["loglik", "calibrated", "generate"],
                 help="rank options by likelihood, by likelihood gained over black frames, "
                 "or generate a reply and parse it")
  p.add_argument("--limit", type=int)
  p.add_argument("--sampler", help="frame sampler (default: the run's, or uniform)")
  p.add_argument("--frames", type=int, help="frame budget (default: the run's; oracle: 8)")
  p.add_argument("--blind", action="store_true", help="black frames: the model without video")
  p.add_argument("--shot-scores", default="transnetv2", choices=["transnetv2", "truth"],
                 help="oracle with avs: detector scores or the generator's cuts")
  p.add_argument("--train", help="prior baseline: the training manifest it counts answers in")
  p.add_argument("--judge", metavar="LLM", help="open-ended answers: a text LLM (Hugging Face "
                 "directory or hub id, or GGUF, with its tokenizer) that decides whether a reply "
                 "means the reference answer (default: normalised match)")
  p.add_argument("--out", help="results JSON (default: next to the checkpoint, or stdout only)")
  p.add_argument("--strict", action="store_true", help="stop at the first unreadable video or "
                 "manifest line (default: skip it and count it by reason)")
  p.add_argument("--curve", action="store_true", help="score every snapshot the run kept "
                 "(stages.NAME.snapshot_every) and each stage's final params: accuracy against "
                 "training steps, as a table, JSON and PNG under RUN/eval/")
  p.set_defaults(func=eval_command)


def make_benchmark_command(args) -> int:
  from longvid_jax.data import longvideo
  if args.from_config:
    from longvid_jax import config as config_lib
    src = pathlib.Path(args.from_config)  # a run's workdir means the config it trained with
    cfg = (config_lib.from_json(src / "config.json") if src.is_dir()
           else config_lib.load(args.from_config))
    path = longvideo.export_synthetic(cfg.data, args.split, args.out_dir, args.limit)
    print(f"{args.split}: {path}")
    return 0
  longvideo.make_benchmark(args.out_dir, args.videos, args.seconds, args.max_seconds, args.fps,
                           args.size, args.seed, args.heldout, cut_scores=tuple(args.cut_scores),
                           train_question_sets=args.train_question_sets)
  return 0


def ask_command(args) -> int:
  from longvid_jax.evaluate.predictor import Predictor
  pred = Predictor(args.checkpoint, sampler=args.sampler, num_frames=args.frames)
  out = pred.ask(args.video, args.question, args.options or (),
                 mode="loglik" if args.options else "generate",
                 max_new_tokens=args.max_new_tokens)
  if args.json:
    json.dump(out, sys.stdout)
    print()
  else:  # a run trained with rationales shows the frames it cited
    print(f"{out['rationale']} {out['answer']}" if out.get("rationale") else out["answer"])
  return 0


def read_records(path: str, skips=None, strict: bool = True) -> list:
  """A manifest's records; a bad line raises when `strict`, else is counted in `skips`."""
  from longvid_jax.data import records
  out = []
  for lineno, r in records.read_manifest(path):
    if isinstance(r, ValueError):
      if strict or skips is None:
        raise r
      skips.add(f"{path}:{lineno}", "bad_manifest_line", str(r))
    else:
      out.append(r)
  return out


def _curve(args, recs) -> int:
  from longvid_jax.evaluate import curve
  if args.checkpoint in BASELINES:
    raise ValueError("--curve scores a run's snapshots; name a run workdir")
  result = curve.curve(args.checkpoint, recs, args.mode, args.limit, progress=True)
  result["dataset"] = str(args.dataset)
  print(curve.table(result))
  stem = pathlib.Path(args.out) if args.out else (
      pathlib.Path(args.checkpoint) / "eval" / f"curve_{pathlib.Path(args.dataset).stem}")
  stem.parent.mkdir(parents=True, exist_ok=True)
  stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
  png = curve.plot(result, stem.with_suffix(".png"), f"{args.checkpoint} on {args.dataset}")
  print(f"results: {stem.with_suffix('.json')}\nplot: {png}")
  return 0


def eval_command(args) -> int:
  from longvid_jax.data import pipeline
  from longvid_jax.evaluate import benchmark, oracle
  skips = pipeline.Skips()
  recs = read_records(args.dataset, skips, args.strict)
  if args.curve:
    return _curve(args, recs)
  if args.checkpoint == "oracle":
    answer = benchmark.OracleAnswerer(args.sampler or "uniform", args.frames or 8,
                                      args.shot_scores)
    name = f"oracle/{args.sampler or 'uniform'}/k{args.frames or 8}"
  elif args.checkpoint == "prior":
    if not args.train:
      raise ValueError("the prior baseline needs --train MANIFEST")
    answer = oracle.PriorBaseline(read_records(args.train))
    name = "prior"
  else:
    from longvid_jax.evaluate.predictor import Predictor
    pred = Predictor(args.checkpoint, sampler=args.sampler, num_frames=args.frames,
                     blind=args.blind)
    answer = benchmark.ModelAnswerer(pred, args.mode)
    name = f"{pathlib.Path(args.checkpoint).name}/{args.mode}/{pred.sampler_name}/k{pred.k}" + (
        "/blind" if args.blind else "")
  judge = None
  if args.judge:
    from longvid_jax.evaluate import openended
    judge = openended.Judge(args.judge)
  result = benchmark.evaluate(recs, answer, args.limit, progress=True, strict=args.strict,
                              skips=skips, judge=judge)
  result["name"], result["dataset"] = name, str(args.dataset)
  print(benchmark.table(result["summary"], f"{name} on {args.dataset}"))
  out = args.out
  if out is None and args.checkpoint not in BASELINES:
    out = str(pathlib.Path(args.checkpoint) / "eval" / (
        f"{pathlib.Path(args.dataset).stem}_{name.replace('/', '_')}.json"))
  if out:
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(json.dumps(result, indent=2))
    print(f"results: {out}")
  return 0
