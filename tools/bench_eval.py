"""Questions per second of `longvid eval` (a clip's questions scored in one batch) against
answering them one `ask` at a time, with one loaded run, on the same multiple-choice records.

Both paths decode and encode each clip; `eval` does it once per clip and scores all of that
clip's questions and options in one batched call, `ask` repeats everything per question. The
first pass of each is a warm-up (compilation), the second is timed. Answers must agree.

  python tools/bench_eval.py RUN MANIFEST [--questions 20]
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("run", help="a run workdir")
  p.add_argument("manifest", help="multiple-choice records (e.g. RUN/heldout/*.jsonl)")
  p.add_argument("--questions", type=int, default=20)
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
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
