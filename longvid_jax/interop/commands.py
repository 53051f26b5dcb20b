"""`longvid llm-convert` and `longvid llm-chat`: the text LLM on its own, for checking an import
before it goes into the multimodal model."""

from __future__ import annotations


def _convert(args) -> int:
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  params, cfg, tok = hf.import_llm(args.source, dtype=args.dtype)
  out = hf.export_llm(params, cfg, args.out_dir, tokenizer=tok)
  print(f"wrote {cfg.family} ({cfg.num_layers} layers, d={cfg.hidden_size}, vocab "
        f"{cfg.vocab_size}) to {out}" + ("" if tok else " (no tokenizer found in the source)"))
  return 0


def _chat(args) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  from longvid_jax.models import generate  # pylint: disable=g-import-not-at-top
  from longvid_jax.models.llm import DecoderLM  # pylint: disable=g-import-not-at-top
  params, cfg, tok = hf.import_llm(args.source)
  if tok is None:
    raise SystemExit(f"{args.source} has no tokenizer; llm-chat needs one")
  messages = ([{"role": "system", "content": args.system}] if args.system else [])
  messages.append({"role": "user", "content": args.prompt})
  print(generate.chat(DecoderLM(cfg), params, tok, messages,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_p=args.top_p, rng=jax.random.key(args.seed)))
  return 0


def register(sub) -> None:
  p = sub.add_parser("llm-convert", help="import an LLM (HF dir, hub id, .gguf, asset name) and "
                     "write it as a Hugging Face directory")
  p.add_argument("source", help="local HF directory, hub id, .gguf file or asset name")
  p.add_argument("out_dir", help="directory to write config.json + model.safetensors into")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast the weights (default: keep the stored / dequantised dtype)")
  p.set_defaults(func=_convert)

  p = sub.add_parser("llm-chat", help="answer one prompt with an imported LLM")
  p.add_argument("source", help="local HF directory, hub id, .gguf file or asset name")
  p.add_argument("--prompt", default="What is the capital of France?")
  p.add_argument("--system", default=None, help="system message (default: the template's)")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=_chat)
