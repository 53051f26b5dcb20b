"""Open-ended questions: normalised matching, a judge model, and how `longvid eval` mixes them
with multiple choice (chance = the most common answer's share of a task)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from longvid_jax import cli
from longvid_jax.data import records
from longvid_jax.evaluate import benchmark, openended, oracle
from longvid_jax.evaluate.predictor import Predictor
from test_eval import manifest, run_dir  # noqa: F401  pylint: disable=unused-import


@pytest.mark.parametrize("reply,answer,exact,match", [
    ("Yes", "yes", True, True), ("yes.", "yes", False, True), ("The red one", "red one", False,
                                                                True),
    ("three", "3", False, True), ("in  a   park!", "park", False, False),
    ("blue", "red", False, False)])
def test_match(reply, answer, exact, match):
  assert openended.exact(reply, answer) == exact
  assert openended.match(reply, answer) == match


def _rec(i, task, answer, options=(), answer_index=None):
  return records.Record(id=f"q{i}", video=f"v{i}.mp4", turns=((f"question {i}?", answer),),
                        options=options, answer_index=answer_index, task=task)


def test_evaluate_mixes_choice_and_open_questions():
  recs = [_rec(0, "anet/yes_no", "yes"), _rec(1, "anet/yes_no", "yes"),
          _rec(2, "anet/yes_no", "no"), _rec(3, "anet/color", "red"),
          _rec(4, "mc", "b", ("a", "b", "c"), 1)]
  replies = {"q0": "Yes.", "q1": "no", "q2": "No", "q3": "crimson"}

  def answer(r):
    return {"choice": 1} if r.options else {"reply": replies[r.id]}

  res = benchmark.evaluate(recs, answer)
  by = {row["id"]: row for row in res["rows"]}
  assert [by[f"q{i}"]["correct"] for i in range(5)] == [True, False, True, False, True]
  assert (by["q0"]["exact"], by["q0"]["match"]) == (False, True)
  s = res["summary"]
  assert s["tasks"]["anet/yes_no"]["chance"] == pytest.approx(2 / 3)  # always "yes"
  assert s["tasks"]["anet/color"]["chance"] == 1.0 and s["tasks"]["mc"]["chance"] == 1 / 3
  assert s["open_ended"] == {"n": 4, "exact": 0.25, "match": 0.5}  # "No" is exact
  assert s["unparsed"] == 0 and s["accuracy"] == pytest.approx(3 / 5)
  assert "open-ended: 4 questions, exact match 0.250, normalised match 0.500" in \
      benchmark.table(s)

  class Judge:  # a judge that accepts crimson for red
    source = "stub"

    def __call__(self, question, answer, reply):
      ok = openended.match(reply, answer) or (answer, reply) == ("red", "crimson")
      return {"judge": ok, "judge_p_yes": float(ok)}

  res = benchmark.evaluate(recs, answer, judge=Judge())
  assert [row["correct"] for row in res["rows"]] == [True, False, True, True, True]
  assert res["summary"]["open_ended"]["judge"] == 0.75 and res["summary"]["judge"] == "stub"
  prior = oracle.PriorBaseline(recs)
  assert prior(recs[2]) == {"reply": "yes"} and prior(recs[4]) == {"choice": 1}


@pytest.mark.slow
def test_a_run_answers_open_questions_by_generation(run_dir, manifest, tmp_path, capsys):  # noqa: F811
  """`longvid eval` on a manifest with open-ended records: the reply is the run's greedy
  generation for the bare question, the row is scored by match."""
  r = next(r for _, r in records.read_manifest(manifest))
  free = records.Record(id="free", video=r.video, turns=((r.question, r.answer),), task="free")
  path = tmp_path / "open.jsonl"
  records.write_manifest(path, [r, free])
  out = tmp_path / "res.json"
  assert cli.main(["eval", str(run_dir), str(path), "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  row = next(x for x in res["rows"] if x["id"] == "free")
  p = Predictor(run_dir)
  clip = p.clip(r.video)
  want = p.generate(p.features(clip), r.question, p.video_text(clip), 24).text
  assert row["reply"] == want and row["correct"] == openended.match(want, r.answer)
  assert res["summary"]["open_ended"]["n"] == 1 and "open-ended: 1 questions" in \
      capsys.readouterr().out


def _judge_dir(tmp_path):
  """A tiny random Qwen2 with GPT-2's tokenizer and a plain chat template, saved the way
  transformers saves models."""
  import transformers  # pylint: disable=g-import-not-at-top
  from longvid_jax.assets import asset  # pylint: disable=g-import-not-at-top
  from test_llm_parity import hf_model  # pylint: disable=g-import-not-at-top
  d = tmp_path / "judge"
  d.mkdir()
  shutil.copy(asset("gpt2_encoder_json"), d / "vocab.json")
  shutil.copy(asset("gpt2_vocab_bpe"), d / "merges.txt")
  template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "GPT2Tokenizer", "chat_template": template,
       "eos_token": "<|endoftext|>"}))
  ref = hf_model("qwen2", vocab_size=50257, num_attention_heads=4, num_key_value_heads=2)
  ref.save_pretrained(d)
  return d, ref, transformers.AutoTokenizer.from_pretrained(d)


def test_judge_matches_transformers_on_the_same_prompt(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  d, ref, hf_tok = _judge_dir(tmp_path)
  judge = openended.Judge(str(d))
  q, a, reply = "What colour is the ball?", "red", "crimson"
  got = judge(q, a, reply)
  text = openended.JUDGE_PROMPT.format(question=q, answer=a, reply=reply)
  prompt = hf_tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                      add_generation_prompt=True)
  with torch.no_grad():
    logits = ref(torch.tensor([hf_tok(prompt)["input_ids"]])).logits[0, -1].double()
  logp = torch.log_softmax(logits, -1).numpy()
  first = lambda w: sorted({hf_tok(v)["input_ids"][0] for v in (w, w.capitalize(), " " + w)})  # noqa: E731
  yes, no = np.logaddexp.reduce(logp[first("yes")]), np.logaddexp.reduce(logp[first("no")])
  want = 1 / (1 + np.exp(no - yes))
  assert abs(got["judge_p_yes"] - want) < 1e-4  # float32 JAX vs float32 PyTorch, rounded to 1e-4
  assert got["judge"] == (want > 0.5)
  assert judge(q, a, reply) == got  # deterministic


def test_judge_without_a_tokenizer_says_so(tmp_path):
  d, _, _ = _judge_dir(tmp_path)
  for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
    (d / name).unlink()
  with pytest.raises(ValueError, match=r"judge .*no tokenizer found beside the weights"):
    openended.Judge(str(d))
