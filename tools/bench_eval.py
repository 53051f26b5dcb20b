"""Questions per second of `longvid eval` (a clip's questions scored in one batch) against
answering them one `ask` at a time, with one loaded run, on the same multiple-choice records.

Both paths decode and encode each clip; `eval` does it once per clip and scores all of that
clip's questions and options in one batched call, `ask` repeats everything per question. The
first pass of each is a warm-up (compilation), the second is timed. Answers must agree.

`--command` also times what a user waits for: the whole `longvid ask RUN VIDEO QUESTION`
process (start-up, loading the run, compiling, answering), first with an empty compilation
cache and then with the one it filled, beside the in-process answer time measured above.

  python tools/bench_eval.py RUN MANIFEST [--questions 20] [--command]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def command_seconds(run: str, video: str, question: str) -> tuple[float, float]:
  """Wall seconds of `longvid ask` as a fresh process: (empty compilation cache, warm cache)."""
  out = []
  with tempfile.TemporaryDirectory() as cache:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    for _ in range(2):
      t0 = time.perf_counter()
      subprocess.run([sys.executable, "-m", "longvid_jax.cli", "ask", run, video, question],
                     env=env, check=True, capture_output=True)
      out.append(time.perf_counter() - t0)
  return out[0], out[1]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("run", help="a run workdir")
  p.add_argument("manifest", help="multiple-choice records (e.g. RUN/heldout/*.jsonl)")
  p.add_argument("--questions", type=int, default=20)
  p.add_argument("--command", action="store_true",
                 help="also time the whole `longvid ask` command, cold and warm")
  args = p.parse_args(argv)

  from longvid_jax.data import records  # pylint: disable=g-import-not-at-top
  from longvid_jax.evaluate import benchmark  # pylint: disable=g-import-not-at-top
  from longvid_jax.evaluate.predictor import Predictor  # pylint: disable=g-import-not-at-top

  recs = [r for _, r in records.read_manifest(args.manifest)
          if not isinstance(r, ValueError) and r.options][:args.questions]
  if not recs:
    raise SystemExit(f"{args.manifest} has no multiple-choice records")
  pred = Predictor(args.run)
  answerer = benchmark.ModelAnswerer(pred, "loglik")

  def batched():
    return [row["choice"] for row in benchmark.evaluate(recs, answerer)["rows"]]

  def one_by_one():
    return [pred.ask(r.video, r.question, r.options, mode="loglik", start=r.start, end=r.end)
            ["choice"] for r in recs]

  out = {}
  for name, fn in (("eval", batched), ("ask", one_by_one)):
    fn()  # compile
    answerer._key = None  # pylint: disable=protected-access  # no clip reuse across passes
    t0 = time.perf_counter()
    choices = fn()
    out[name] = {"seconds": time.perf_counter() - t0, "choices": choices}
  if out["eval"]["choices"] != out["ask"]["choices"]:
    raise SystemExit("eval and ask disagree on an answer: "
                     f"{out['eval']['choices']} vs {out['ask']['choices']}")
  n, clips = len(recs), len({(r.video, r.start, r.end) for r in recs})
  result = {"questions": n, "clips": clips,
            "eval_questions_per_s": n / out["eval"]["seconds"],
            "ask_questions_per_s": n / out["ask"]["seconds"]}
  result["speedup"] = result["eval_questions_per_s"] / result["ask_questions_per_s"]
  print(f"{n} questions about {clips} clips")
  print(f"eval (batched per clip) {result['eval_questions_per_s']:.2f} questions/s")
  print(f"ask (one at a time)     {result['ask_questions_per_s']:.2f} questions/s")
  print(f"ratio                   {result['speedup']:.2f}x")
  if args.command:
    r = recs[0]
    cold, warm = command_seconds(args.run, r.video, r.question)
    answer_s = out["ask"]["seconds"] / n
    result.update(command_cold_s=cold, command_warm_s=warm, answer_in_process_s=answer_s)
    print(f"`longvid ask` command   {cold:.1f} s with an empty compilation cache, {warm:.1f} s "
          f"warm; {warm / answer_s:.0f}x the {answer_s:.2f} s an answer takes in-process")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
