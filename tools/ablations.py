"""Train, evaluate and tabulate one of the paper's ablation tables (variants in
experiments/ablations/tables.py).

  python tools/ablations.py table3 --steps 4 --out workdir/ablations

Each variant trains into OUT/<table>/<variant> (reruns resume), is evaluated by
log-likelihood on (a) the recipe's own held-out synthetic videos and (b) the long-video
benchmark's test split (both generated under OUT/data when missing), and the table lands in
OUT/<table>/table.md, results.json and plot.png. `--steps` shrinks every stage; omit it to
train the recipe's full schedule.

`--local` builds the variants on experiments/local.py instead and scores them on that recipe's
long-video val split (its `data.manifest`, which `--set` may point elsewhere) and on `--test`
manifests, e.g. another seed's videos:

  python tools/ablations.py table3 --local --out workdir/ablations_local \
      --set data.manifest=data/local/{split}.jsonl --test data/local_s1/test.jsonl

`--curve` also scores each variant's snapshots (`--set stages.sft.snapshot_every=N`) on the
first dataset, so the table shows whether a variant had converged (curves.png).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from longvid_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLES = config_lib.module(ROOT / "experiments" / "ablations" / "tables.py")


def _datasets(out: pathlib.Path, c, args) -> dict[str, pathlib.Path]:
  from longvid_jax.data import longvideo  # pylint: disable=g-import-not-at-top
  if args.local:  # the recipe's own held-out videos, then any other test manifests
    sets = {"long-video val": pathlib.Path(str(c.data.manifest).format(split="val"))}
    sets.update({f"test {pathlib.Path(t).parent.name}": pathlib.Path(t) for t in args.test})
    missing = [str(p) for p in sets.values() if not p.exists()]
    if missing:
      raise SystemExit(f"--local: no manifest at {', '.join(missing)}; build the benchmark as "
                       "experiments/local.py says, or point --set data.manifest / --test at it")
    return sets
  data = out / "data"
  synth = data / "synthetic_test.jsonl"
  if not synth.exists():
    longvideo.export_synthetic(c.data, "test", data, limit=args.synthetic_videos)
  bench = data / "long" / "test.jsonl"
  if not bench.exists():
    longvideo.make_benchmark(data / "long", num_videos=args.long_videos, seconds=60,
                             max_seconds=120, fps=4, size=int(c.data.image_size), seed=0)
  return {"synthetic (held-out)": synth, "long-video test": bench}


def _finished_twin(out: pathlib.Path, c) -> pathlib.Path | None:
  """A finished run under `out` with exactly this config (table3/svc is table6/residual)."""
  want = json.loads(c.to_json_best_effort())
  for f in sorted(out.glob("*/*/config.json")):
    if (f.parent / "summary.json").exists() and json.loads(f.read_text()) == want:
      return f.parent
  return None


def _train(c, out: pathlib.Path, workdir: pathlib.Path, steps: int | None):
  """(workdir, info): trains unless an identical finished run exists."""
  from longvid_jax.train import runner  # pylint: disable=g-import-not-at-top
  if steps:
    config_lib.override(c, [f"stages.{s}.{k}={v}" for s in c.recipe for k, v in (
        ("steps", steps), ("warmup_steps", min(5, steps)), ("log_every", 1),
        ("checkpoint_every", steps))])
  twin = _finished_twin(out, c)
  if twin is not None:  # the time it took then, not the instant a rerun takes to skip it
    summary = json.loads((twin / "summary.json").read_text())
    info = {"train_seconds": sum(s.get("seconds", 0) for s in summary["stages"]),
            "stages": _final_losses(summary)}
    return twin, info if twin.absolute() == workdir.absolute() else {**info, "reused": str(twin)}
  t0 = time.time()
  summary = runner.run(c, workdir)
  return workdir, {"train_seconds": round(time.time() - t0, 1), "stages": _final_losses(summary)}


def _final_losses(summary: dict) -> dict:
  return {s["name"]: s.get("final_loss") for s in summary["stages"]}


def _evaluate(workdir, sampler, datasets, limit) -> dict:
  from longvid_jax.data import records  # pylint: disable=g-import-not-at-top
  from longvid_jax.evaluate import benchmark  # pylint: disable=g-import-not-at-top
  from longvid_jax.evaluate.predictor import Predictor  # pylint: disable=g-import-not-at-top
  pred = Predictor(workdir, sampler=sampler)
  out = {}
  for name, path in datasets.items():
    recs = [r for _, r in records.read_manifest(path)]
    t0 = time.time()
    res = benchmark.evaluate(recs, benchmark.ModelAnswerer(pred, "loglik"), limit)
    out[name] = {**res["summary"], "eval_seconds": round(time.time() - t0, 1)}
    # the best any model could do with the frames this sampler chose (same shot scores)
    # (content samplers need the model's features, which the oracle does not have)
    oracle = benchmark.evaluate(recs, benchmark.OracleAnswerer(
        sampler, pred.k, "transnetv2"), limit) if (
            "timeline" in recs[0].meta and pred.describe is None) else None
    if oracle:
      out[name]["oracle_accuracy"] = oracle["summary"]["accuracy"]
  return out


def _curve(workdir, manifest, limit) -> list[dict]:
  """Held-out accuracy at each snapshot and stage end: whether the variant had converged."""
  from longvid_jax.data import records  # pylint: disable=g-import-not-at-top
  from longvid_jax.evaluate import curve  # pylint: disable=g-import-not-at-top
  recs = [r for _, r in records.read_manifest(manifest)]
  return curve.curve(workdir, recs, "loglik", limit)["points"]


def _write(table: str, out: pathlib.Path, results: dict, args) -> None:
  names = list(results)
  datasets = list(next(iter(results.values()))["eval"])
  lines = [f"### {table}", "", f"The paper finds: {TABLES.PAPER[table]}.", "",
           "| variant | visual tokens | " + " | ".join(datasets) +
           " | long-video needle | oracle, same frames | train s | eval s/q |",
           "|---|---:|" + "---:|" * len(datasets) + "---:|---:|---:|---:|"]
  for v in names:
    r = results[v]
    ev = r["eval"]
    accs = " | ".join(f"{ev[d]['accuracy']:.3f} [{ev[d]['ci95'][0]:.2f}–{ev[d]['ci95'][1]:.2f}] "
                      f"(chance {ev[d]['chance']:.2f})" for d in datasets)
    long = ev.get("long-video test") or ev.get("long-video val", {})
    needle = long.get("tasks", {}).get("needle", {}).get("accuracy")
    tokens = ev[datasets[0]]["visual_tokens_per_sample"]
    spq = sum(ev[d]["seconds_per_sample"] for d in datasets) / len(datasets)
    oracle = long.get("oracle_accuracy")
    train = f"reused {pathlib.Path(r['reused']).parent.name}/{pathlib.Path(r['reused']).name}" \
        if r.get("reused") else f"{r.get('train_seconds', 0):.0f}"
    lines.append(f"| {v} | {tokens:.0f} | {accs} | "
                 f"{'-' if needle is None else f'{needle:.3f}'} | "
                 f"{'-' if oracle is None else f'{oracle:.3f}'} | {train} | {spq:.2f} |")
  per_task = _task_rows(results, datasets[0])
  if per_task:
    lines += ["", f"Per task on {datasets[0]} (accuracy [95% CI]):", "", *per_task]
  curves = {v: r["curve"] for v, r in results.items() if r.get("curve")}
  if curves:
    lines += ["", f"Accuracy on {datasets[0]} against training steps (curves.png):", "",
              "| variant | " + " | ".join(["step: accuracy"] * max(map(len, curves.values()))) +
              " |", "|---|" + "---|" * max(map(len, curves.values()))]
    lines += [f"| {v} | " + " | ".join(f"{p['stage']} {p['step']}: {p['accuracy']:.3f}"
                                       for p in pts) + " |" for v, pts in curves.items()]
  # the steps each variant trained (--steps and --set both change them)
  schedules = {" → ".join(f"{k} {n}" for k, n in r["schedule"].items())
               for r in results.values() if r.get("schedule")}
  steps = "; ".join(sorted(schedules)) or args.steps or "recipe"
  lines += ["", f"steps per stage: {steps}; command: "
            f"`python tools/ablations.py {args.command}`"]
  text = "\n".join(lines)
  (out / "table.md").write_text(text + "\n")
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(text)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2))
  width = 0.8 / len(datasets)
  for j, d in enumerate(datasets):
    ys = np.array([results[v]["eval"][d]["accuracy"] for v in names])
    ci = np.array([results[v]["eval"][d]["ci95"] for v in names])
    ax.bar([i + j * width for i in range(len(names))], ys, width, label=d,
           yerr=[ys - ci[:, 0], ci[:, 1] - ys], capsize=2)
    ax.axhline(results[names[0]]["eval"][d]["chance"], color=f"C{j}", ls=":", lw=1)
  ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(names))], names)
  ax.set_ylabel("accuracy (bars: 95% CI; dotted: chance)")
  ax.set_ylim(0, 1)
  ax.set_title(table)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "plot.png", dpi=100)
  plt.close(fig)
  if per_task:
    _task_plot(plt, table, out / "tasks.png", results, datasets[0])
  if curves:
    _curve_plot(plt, table, out / "curves.png", curves, datasets[0])


def _task_chance(results: dict, dataset: str) -> dict[str, float]:
  """Each task of `dataset` that any variant was scored on, in name order, and its chance."""
  chance = {}
  for r in results.values():
    for t, got in r["eval"][dataset].get("tasks", {}).items():
      chance.setdefault(t, got["chance"])
  return dict(sorted(chance.items()))


def _task_rows(results: dict, dataset: str) -> list[str]:
  """A markdown table: one row per variant, one column per task of `dataset`."""
  chance = _task_chance(results, dataset)
  tasks = list(chance)
  if not tasks:
    return []
  rows = ["| variant | " + " | ".join(f"{t} (chance {chance[t]:.2f})" for t in tasks) + " |",
          "|---|" + "---:|" * len(tasks)]
  for v, r in results.items():
    got = r["eval"][dataset]["tasks"]
    rows.append(f"| {v} | " + " | ".join(
        f"{got[t]['accuracy']:.3f} [{got[t]['ci95'][0]:.2f}–{got[t]['ci95'][1]:.2f}]"
        if t in got else "-" for t in tasks) + " |")
  return rows


def _task_plot(plt, table: str, path: pathlib.Path, results: dict, dataset: str) -> None:
  """Accuracy per task, one bar per variant, with 95% intervals and each task's chance."""
  chance, names = _task_chance(results, dataset), list(results)
  tasks = list(chance)
  fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(tasks), 3.2))
  width = 0.8 / len(names)
  for j, v in enumerate(names):
    got = results[v]["eval"][dataset]["tasks"]
    xs = [i + j * width for i, t in enumerate(tasks) if t in got]
    ys = np.array([got[t]["accuracy"] for t in tasks if t in got])
    ci = np.array([got[t]["ci95"] for t in tasks if t in got])
    ax.bar(xs, ys, width, label=v, yerr=[ys - ci[:, 0], ci[:, 1] - ys], capsize=2)
  for i, t in enumerate(tasks):
    ax.hlines(chance[t], i - width / 2, i + width * (len(names) - 0.5), colors="k", linestyles=":")
  ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(tasks))], tasks)
  _save(plt, fig, ax, path, f"{table}: {dataset}", "accuracy (bars: 95% CI; dotted: chance)")


def _save(plt, fig, ax, path: pathlib.Path, title: str, ylabel: str) -> None:
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _curve_plot(plt, table: str, path: pathlib.Path, curves: dict, dataset: str) -> None:
  """One line per variant: accuracy and its 95% band against the last stage's steps, from the
  params it started with (variants may differ in the stages before it, e.g. table5's AE)."""
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  last = next(iter(curves.values()))[-1]["stage"]
  for j, (v, pts) in enumerate(curves.items()):
    start = [p for p in pts if p["stage"] != last][-1:]
    pts = [{**p, "step": 0} for p in start] + [p for p in pts if p["stage"] == last]
    x = [p["step"] for p in pts]
    ax.plot(x, [p["accuracy"] for p in pts], "o-", color=f"C{j}", label=v)
    ax.fill_between(x, [p["ci95"][0] for p in pts], [p["ci95"][1] for p in pts],
                    color=f"C{j}", alpha=0.12, lw=0)
  first = next(iter(curves.values()))
  ax.axhline(first[-1]["chance"], color="k", ls=":", lw=1, label="chance")
  ax.set_xlabel(f"{last} step (0: the params it started from)")
  _save(plt, fig, ax, path, f"{table}: {dataset}", "accuracy (band: 95% CI)")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("table", choices=["table2", "table3", "table4", "table5", "table6"])
  ap.add_argument("--out", default="workdir/ablations")
  ap.add_argument("--steps", type=int, help="steps per stage (default: the recipe's)")
  ap.add_argument("--full", action="store_true", help="the full-size recipe, not runlocal")
  ap.add_argument("--only", nargs="+", help="run only these variants")
  ap.add_argument("--limit", type=int, help="questions per dataset")
  ap.add_argument("--synthetic-videos", type=int, default=12)
  ap.add_argument("--long-videos", type=int, default=20)
  ap.add_argument("--trained", help="table2: evaluate this finished run instead of training")
  ap.add_argument("--local", action="store_true",
                  help="variants of experiments/local.py, scored on its long-video val split")
  ap.add_argument("--test", nargs="+", default=[], help="--local: more manifests to score")
  ap.add_argument("--curve", action="store_true",
                  help="also score every snapshot a variant's run kept on the first dataset "
                       "(set stages.<name>.snapshot_every) and draw curves.png")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a config value of every variant (e.g. data paths)")
  args = ap.parse_args(argv)
  args.command = " ".join(sys.argv[1:] if argv is None else argv)
  if args.full and args.local:
    ap.error("--full and --local name different recipes; pick one")
  mode = "" if args.full else "local" if args.local else "runlocal"
  out = pathlib.Path(args.out)
  names = list(TABLES.variants(TABLES.base(mode))[args.table])
  results = {}
  previous = out / args.table / "results.json"
  if args.only and previous.exists():  # keep the variants an earlier invocation measured
    results = {k: v for k, v in json.loads(previous.read_text()).items() if k in names}
  for v in names:
    if args.only and v not in args.only:
      continue
    c = TABLES.get_config(f"{args.table}/{v}" + (f",{mode}" if mode else ""))
    config_lib.override(c, args.set)
    datasets = _datasets(out, c, args)
    # table2's variants differ only at inference: they share one trained model
    workdir = out / args.table / ("model" if args.table == "table2" else v)
    if args.table == "table2" and args.trained:
      workdir, info = pathlib.Path(args.trained), {"train_seconds": 0.0}
    else:
      workdir, info = _train(c, out, workdir, args.steps)
      info["schedule"] = {s: int(c.stages[s].steps) for s in c.recipe}
    info["eval"] = _evaluate(workdir, c.data.sampler, datasets, args.limit)
    if args.curve:
      info["curve"] = _curve(workdir, next(iter(datasets.values())), args.limit)
    results[v] = info
    results = {k: results[k] for k in names if k in results}  # table order
    (out / args.table).mkdir(parents=True, exist_ok=True)
    _write(args.table, out / args.table, results, args)  # after each variant: partial tables
  return 0


if __name__ == "__main__":
  sys.exit(main())
