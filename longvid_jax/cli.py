"""The `longvid` command. Subcommands live next to the code they drive; each module listed in
COMMAND_MODULES exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import shlex
import sys

# transformers serves tokenizers here; its notice that PyTorch is absent is no concern of ours
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

COMMAND_MODULES = (
    "longvid_jax.cli",  # run
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
