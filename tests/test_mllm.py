"""Multimodal composition: placeholder splicing, answer-only loss, prompt building."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longvid_jax.data import prompts
from longvid_jax import trees
from longvid_jax.models.llm import DecoderLM, LLMConfig
from longvid_jax.models.mllm import VideoLLM, lm_loss, logits_positions
from longvid_jax.models.projector import MLPProjector
from longvid_jax.models.reducers.svc import SVC
from test_pipeline import CharTok  # pylint: disable=g-bad-import-order

VID = 99


class _Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def _model():
  llm = DecoderLM(LLMConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1))
  return VideoLLM(encoder=_Identity(), reducer=SVC(strides=(2, 2, 2), bottleneck=4),
                  projector=MLPProjector(16), llm=llm, video_token_id=VID)


def _params(m, *args, **kwargs):
  """Params shaped as `m.init(*args, **kwargs)` makes them, drawn with NumPy: compiling flax's
  random init (one threefry program per N-d kernel) is most of a minute on CPU, and nothing
  here depends on how params are initialised."""
  shapes = trees.strip_boxes(jax.eval_shape(m.init, jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


def test_splice_puts_visual_tokens_in_order_at_placeholders():
  m = _model()
  ids = jnp.array([[1, 2, VID, VID, VID, 3, 0, 0], [VID, VID, VID, 4, 5, 6, 7, 0]])
  am = jnp.array([[1] * 6 + [0, 0], [1] * 7 + [0]])
  visual = jax.random.normal(jax.random.key(0), (2, 3, 16))
  vmask = jnp.array([[True, True, True], [True, False, True]])
  feats = jnp.zeros((2, 2, 2, 2, 3))
  params = _params(m, ids, am, features=feats)
  embeds, mask = m.apply(params, ids, am, visual, vmask, method=VideoLLM.splice)
  text = m.apply(params, jnp.where(ids == VID, 0, ids), method=lambda mm, i: mm.llm.embed(i))
  e, t, v = map(np.asarray, (embeds, text, visual))
  np.testing.assert_array_equal(e[0, 2:5], v[0])
  np.testing.assert_array_equal(e[1, 0:3], v[1])
  np.testing.assert_array_equal(e[0, [0, 1, 5]], t[0, [0, 1, 5]])
  np.testing.assert_array_equal(e[1, 3:], t[1, 3:])
  # a masked visual token is hidden from attention; padding stays hidden
  np.testing.assert_array_equal(np.asarray(mask[1]), [1, 0, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(np.asarray(mask[0]), np.asarray(am[0]).astype(bool))


def test_logits_depend_on_video_only_through_placeholders():
  m = _model()
  ids = jnp.array([[1, VID, VID, 3, 4]])
  am = jnp.ones_like(ids)
  f1 = jax.random.normal(jax.random.key(0), (1, 4, 4, 2, 8))
  f2 = jax.random.normal(jax.random.key(1), (1, 4, 4, 2, 8))
  params = _params(m, ids, am, features=f1)
  apply = jax.jit(m.apply)  # one compile for both calls, not one per op
  l1 = apply(params, ids, am, features=f1)
  l2 = apply(params, ids, am, features=f2)
  np.testing.assert_array_equal(np.asarray(l1[0, 0]), np.asarray(l2[0, 0]))  # before the video
  assert np.abs(np.asarray(l1[0, 3:] - l2[0, 3:])).max() > 1e-4  # after it


def test_lm_loss_counts_answer_tokens_only():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(1, 6, 10)), jnp.float32)
  ids = jnp.array([[1, 2, 3, 4, 5, 6]])
  mask = jnp.array([[0, 0, 0, 1, 1, 0]])
  loss, _ = lm_loss(logits, ids, mask)
  logp = jax.nn.log_softmax(logits, -1)
  expected = -(logp[0, 2, 4] + logp[0, 3, 5]) / 2  # targets 4 and 5, predicted at 2 and 3
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  other = ids.at[0, 1].set(9).at[0, 5].set(0)  # change non-target tokens only
  np.testing.assert_allclose(lm_loss(logits, other, mask)[0], loss, rtol=1e-6)


def test_loss_on_listed_targets_equals_loss_on_every_position():
  """`data.max_targets`: the head runs at the targets only; loss and gradients are those of the
  full-length head (float32, rtol 1e-5), and too many targets is refused naming the field."""
  tok = CharTok()
  turns = [("Colour?", "red"), ("Shape?", "a cube")]
  full = prompts.encode_conversation(tok, turns, num_visual=4, seq_len=80)
  ex = prompts.encode_conversation(tok, turns, num_visual=4, seq_len=80, max_targets=16)
  n = int(full["loss_mask"].sum())
  assert ex["target_index"][:n].tolist() == np.flatnonzero(full["loss_mask"]).tolist()
  assert not ex["target_index"][n:].any()
  with pytest.raises(ValueError, match="data.max_targets is 4"):
    prompts.encode_conversation(tok, turns, num_visual=4, seq_len=80, max_targets=4)
  # a vocabulary that holds every CharTok id, so each position sees distinct tokens
  llm = DecoderLM(LLMConfig(vocab_size=tok.video_token_id + 1, hidden_size=16,
                            intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1))
  m = VideoLLM(encoder=_Identity(), reducer=SVC(strides=(2, 2, 2), bottleneck=4),
               projector=MLPProjector(16), llm=llm, video_token_id=tok.video_token_id)
  ids, am = jnp.asarray(ex["input_ids"])[None], jnp.asarray(ex["attention_mask"])[None]
  loss_mask, at = jnp.asarray(ex["loss_mask"])[None], jnp.asarray(ex["target_index"])[None]
  feats = jax.random.normal(jax.random.key(0), (1, 4, 4, 2, 8))
  params = _params(m, ids, am, features=feats)

  def losses(p):
    every = lm_loss(m.apply(p, ids, am, features=feats), ids, loss_mask)[0]
    listed = lm_loss(m.apply(p, ids, am, features=feats, logits_at=logits_positions(at)),
                     ids, loss_mask, at)[0]
    return every, listed

  every, listed = jax.jit(losses)(params)
  np.testing.assert_allclose(listed, every, rtol=1e-5)
  # the listed logits are the full head's rows one position before each target
  full = np.asarray(m.apply(params, ids, am, features=feats))[0]
  at_targets = np.asarray(m.apply(params, ids, am, features=feats,
                                  logits_at=logits_positions(at)))[0]
  n = int((ex["target_index"] > 0).sum())
  np.testing.assert_allclose(at_targets[:n], full[ex["target_index"][:n] - 1], rtol=1e-5,
                             atol=1e-6)
  g_every = jax.jit(jax.grad(lambda p: losses(p)[0]))(params)
  g_listed = jax.jit(jax.grad(lambda p: losses(p)[1]))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_listed, g_every)


def test_prompt_expands_placeholder_and_masks_answer():
  tok = CharTok()
  ex = prompts.encode_example(tok, "What?", "red", num_visual=5, seq_len=64)
  ids = ex["input_ids"][ex["attention_mask"] == 1]
  assert (ids == tok.video_token_id).sum() == 5
  answer = "".join(chr(i) for i in ex["input_ids"][ex["loss_mask"] == 1])
  assert answer == "red</>"
  assert ex["attention_mask"].sum() == len(ids) and ex["input_ids"][len(ids):].tolist() == [0] * (
      64 - len(ids))
  with pytest.raises(ValueError, match="seq_len"):
    prompts.encode_example(tok, "What?", "red", num_visual=60, seq_len=64)


def test_interleaved_frame_times_precede_each_frames_tokens():
  tok = CharTok()
  video = prompts.video_text([0.5, 7.25, 61.0], 70.0, "interleaved")
  ex = prompts.encode_example(tok, "When?", "red", num_visual=6, seq_len=96, video=video)
  n = int(ex["attention_mask"].sum())
  text = "".join(chr(i) if i < 1000 else "#" for i in ex["input_ids"][:n])
  assert text == "<user>00:00.5 ##\n00:07.2 ##\n01:01.0 ##\nWhen?</><assistant>red</>"
  query = "".join(chr(i) for i in ex["input_ids"][ex["query_mask"] == 1])
  assert query == "\nWhen?</><assistant>"  # the frame times belong to the video, not the query
  # the sentence style keeps one placeholder with the times after it
  one = prompts.encode_example(tok, "When?", "red", num_visual=6, seq_len=160,
                               video=prompts.video_text([0.5, 7.25], 9.0, "sentence"))
  text = "".join(chr(i) if i < 1000 else "#" for i in one["input_ids"][one["attention_mask"] == 1])
  assert text.startswith("<user>######\nThis video samples 2 frames of a 9.0-second video at "
                         "00:00.5, 00:07.2.\nWhen?")
  with pytest.raises(ValueError, match="do not split evenly between 3 frames"):
    prompts.encode_example(tok, "When?", "red", num_visual=7, seq_len=96, video=video)
  with pytest.raises(ValueError, match="timestamp style 'inline'"):
    prompts.video_text([0.5], 1.0, "inline")


def test_rationale_cites_frames_by_their_numbers():
  video = prompts.video_text([0.0, 12.5, 31.0], 40.0, "numbered")
  assert video == "frame 1 00:00.0 <video>\nframe 2 00:12.5 <video>\nframe 3 00:31.0 <video>"
  # at 4 fps the frames are 0, 50 and 124; ranges are [start, end) source frames
  ranges = [[0, 50], [40, 125], [51, 60], [130, 140], [60, 124]]
  assert prompts.evidence_frames([0.0, 12.5, 31.0], ranges, 4.0) == [1, 3, 3, None, 3]
  assert prompts.with_rationale("after", [3, 1]) == "frames 3, 1: after"
  assert prompts.with_rationale("red", [2]) == "frame 2: red"
  assert prompts.with_rationale("red", [None]) == "frame none: red"
  with pytest.raises(ValueError, match="at least one evidence range"):
    prompts.with_rationale("red", [])


def test_query_mask_covers_the_question_and_never_the_answer():
  tok = CharTok()
  ex = prompts.encode_example(tok, "Which?", "red", num_visual=3, seq_len=64)
  query = "".join(chr(i) for i in ex["input_ids"][ex["query_mask"] == 1])
  assert query == "\nWhich?</><assistant>"  # after the placeholders, up to the answer
  assert not (ex["query_mask"] & ex["loss_mask"]).any()
  assert not (ex["query_mask"] & (ex["input_ids"] == tok.video_token_id)).any()


def test_conversation_trains_every_answer_and_starts_like_one_turn():
  tok = CharTok()
  turns = [("Colour?", "red"), ("Shape?", "a square"), ("Count?", "two")]
  ex = prompts.encode_conversation(tok, turns, num_visual=3, seq_len=160, system="Hi.")
  n = int(ex["attention_mask"].sum())
  text = "".join(chr(i) if i < 1000 else "#" for i in ex["input_ids"][:n])
  assert text == ("<system>Hi.</><user>###\nColour?</><assistant>red</>"
                  "<user>Shape?</><assistant>a square</><user>Count?</><assistant>two</>")
  read = lambda m: "".join(chr(i) for i in ex["input_ids"][m == 1])
  assert read(ex["loss_mask"]) == "red</>a square</>two</>"
  assert read(ex["query_mask"]) == ("\nColour?</><assistant><user>Shape?</><assistant>"
                                    "<user>Count?</><assistant>")
  # the first turn is token for token the single-turn example that evaluation scores
  one = prompts.encode_example(tok, "Colour?", "red", num_visual=3, seq_len=160, system="Hi.")
  m = int(one["attention_mask"].sum())
  for k in ("input_ids", "loss_mask", "query_mask"):
    np.testing.assert_array_equal(ex[k][:m], one[k][:m])
  with pytest.raises(ValueError, match="3 turns"):
    prompts.encode_conversation(tok, turns, num_visual=3, seq_len=80)
  with pytest.raises(ValueError, match="at least one"):
    prompts.encode_conversation(tok, [], num_visual=3, seq_len=80)


def test_conversation_refuses_a_template_that_rewrites_earlier_turns():
  class Forgetful(CharTok):  # renders only the newest user turn, as some templates do
    def apply_chat_template(self, messages, add_generation_prompt):
      last = max(i for i, m in enumerate(messages) if m["role"] == "user")
      return super().apply_chat_template(messages[last:], add_generation_prompt)

  tok = Forgetful()
  assert prompts.encode_conversation(tok, [("Q?", "a")], 2, 64)["loss_mask"].sum() == 4
  with pytest.raises(ValueError, match="data.qa_turns=1"):
    prompts.encode_conversation(tok, [("Q?", "a"), ("R?", "b")], 2, 64)


def test_longvu_gets_the_question_as_query_and_learns_from_it():
  from longvid_jax.models.reducers.longvu import LongVU  # pylint: disable=g-import-not-at-top
  llm = DecoderLM(LLMConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1))
  m = VideoLLM(encoder=_Identity(), reducer=LongVU(budget=28, low_res_stride=2, chunk=8,
                                                   threshold=2.0),
               projector=MLPProjector(16), llm=llm, video_token_id=VID)
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.standard_normal((1, 4, 4, 4, 8)), jnp.float32)
  n = m.reducer.num_tokens(4, 4, 4)  # one full frame (16) + three low-resolution ones (4 each)
  ids = jnp.asarray([[1, *[VID] * n, 5, 6, 7, 8, 2]], jnp.int32)
  attn = jnp.ones_like(ids)
  qmask = jnp.asarray(prompts.query_mask(ids[0].tolist(), VID))[None]
  params = _params(m, ids, attn, features=feats)["params"]
  assert "query_proj" in params["reducer"]  # built at init even without a question

  def query_grad(qm):
    def loss(p):
      logits = m.apply({"params": p}, ids, attn, features=feats, query_mask=qm)
      return lm_loss(logits, ids, jnp.ones_like(ids))[0]
    return float(jnp.abs(jax.jit(jax.grad(loss))(params)["reducer"]["query_proj"]["kernel"]).sum())

  assert query_grad(qmask) > 0  # the question reached the reducer and trains its query map
  assert query_grad(None) == 0  # without one, the reducer falls back to a fixed choice


def test_projector_norm_makes_visual_embeddings_independent_of_feature_scale():
  """Encoders differ in feature scale by orders of magnitude (EfficientNet's mid-level maps give
  per-token norms near 70); with `norm` the LLM sees the same embeddings whatever the scale, and
  the LayerNorm matches the NumPy formula with torch's epsilon (what exports assume)."""
  p = MLPProjector(8, depth=2, norm=True)
  x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
  params = _params(p, jnp.asarray(x))["params"]
  assert set(params) == {"norm", "linear_0", "linear_1"}
  a = np.asarray(p.apply({"params": params}, jnp.asarray(x)))
  b = np.asarray(p.apply({"params": params}, jnp.asarray(300.0 * x + 7.0)))
  np.testing.assert_allclose(a, b, atol=2e-4)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  want = (x - mu) / np.sqrt(var + 1e-5) * np.asarray(params["norm"]["scale"]) + np.asarray(
      params["norm"]["bias"])
  got = nn.LayerNorm(epsilon=1e-5).apply({"params": params["norm"]}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  plain = MLPProjector(8, depth=2)
  assert "norm" not in _params(plain, jnp.asarray(x))["params"]

