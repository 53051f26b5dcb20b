"""The `longvid` command. Subcommands live next to the code they drive; each module listed in
COMMAND_MODULES exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import pathlib
import sys

COMMAND_MODULES = (
    "longvid_jax.cli",  # run
    "longvid_jax.sampling.commands",  # shots, sample
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
                         pathlib.Path(args.config.partition(":")[0]).stem)
  summary = runner.run(config, workdir)
  print(f"\nsummary:     {workdir.absolute() / 'summary.json'}")
  print(f"checkpoints: {summary['final_params']} (final params); per-stage under {workdir.absolute()}")
  print(f"tensorboard: tensorboard --logdir {workdir.absolute()}")
  for s in summary["stages"]:
    if s["status"] == "done":
      print(f"  {s['name']:<12} {s['status']:<8} {s['steps']:>5} steps  loss {s['first_loss']:.4f} → "
            f"{s['final_loss']:.4f}  {s['seconds']:.1f} s")
    else:
      print(f"  {s['name']:<12} {s['status']:<8} {s.get('note') or ''}")
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


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
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
