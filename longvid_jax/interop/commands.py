"""`longvid llm-convert` and `longvid llm-chat`: the text LLM on its own, for checking an import
before it goes into the multimodal model; `longvid export` and `longvid import`: a whole trained
model as PyTorch-readable parts, and back."""

from __future__ import annotations


def supported() -> str:
  """What `llm-convert --list` prints, read from the tables the importers use."""
  from longvid_jax.interop import gguf  # pylint: disable=g-import-not-at-top
  from longvid_jax.models import llm  # pylint: disable=g-import-not-at-top
  notes = {"llama": "Llama 2 / 3.x, SmolLM2: no biases",
           "qwen2": "Qwen2 / Qwen2.5: q/k/v biases; sliding-window layers",
           "qwen3": "Qwen3 dense: q/k RMSNorm, explicit head_dim; sliding-window layers"}
  lines = ["Hugging Face directories or hub ids (config.json + one or sharded safetensors):"]
  lines += [f"  {t:<6} {cls:<18} {notes.get(t, '')}" for t, cls in llm.HF_ARCHITECTURES.items()]
  lines += [f"  rope_scaling.rope_type: {', '.join(llm.ROPE_KEYS)}",
            "  sliding windows: use_sliding_window + sliding_window, with max_window_layers or "
            "layer_types",
            f"GGUF files: {', '.join(gguf.FAMILIES)}; F32/F16 and the quantisations gguf.quants "
            "dequantises; rope scaling none, linear, yarn",
            "Export: config.json + safetensors for from_pretrained, sharded with "
            "model.safetensors.index.json above --max-shard-size",
            "Anything else (other model types, hidden_act other than silu, Llama biases, Qwen3 "
            "attention_bias, MoE, Llama 3.1 rope_freqs in GGUF) is refused naming the field."]
  return "\n".join(lines)


def _convert(args) -> int:
  from longvid_jax.interop import hf  # pylint: disable=g-import-not-at-top
  from longvid_jax.interop import files  # pylint: disable=g-import-not-at-top
  if args.list:
    print(supported())
    return 0
  if args.source is None or args.out_dir is None:
    raise SystemExit("llm-convert needs SOURCE and OUT_DIR (or --list)")
  shard = files.parse_size(args.max_shard_size)
  params, cfg, tok = hf.import_llm(args.source, dtype=args.dtype)
  out = hf.export_llm(params, cfg, args.out_dir, tokenizer=tok, max_shard_bytes=shard)
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


def _export(args) -> int:
  from longvid_jax.interop import export  # pylint: disable=g-import-not-at-top
  paths = export.export_hf(args.checkpoint, args.out)
  for part, path in paths.items():
    print(f"{part:<11} {path}")
  return 0


def _import(args) -> int:
  from longvid_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from longvid_jax.interop import export  # pylint: disable=g-import-not-at-top
  config = config_lib.load(args.config) if args.config else None
  if config is not None:
    config_lib.override(config, args.set or [])
  elif args.set:
    raise ValueError("--set needs --config")
  out = export.import_hf(args.out_ckpt, args.source, config=config, llm=args.llm,
                         vision=args.vision, compressor=args.compressor)
  print(f"wrote {out / 'params'}; start a run from it with\n"
        f"  longvid run CONFIG --set model.init_from={out}")
  return 0


def register(sub) -> None:
  p = sub.add_parser("llm-convert", help="import an LLM (HF dir, hub id, .gguf, asset name) and "
                     "write it as a Hugging Face directory")
  p.add_argument("source", nargs="?", help="local HF directory, hub id, .gguf file or asset name")
  p.add_argument("out_dir", nargs="?", help="directory to write config.json + safetensors into")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                 help="cast the weights (default: keep the stored / dequantised dtype)")
  p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. "
                 "5GB, 500MB, 2GiB (default: 5GB); bigger models get several with an index")
  p.add_argument("--list", action="store_true", help="print the supported families and "
                 "options, then exit")
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

  p = sub.add_parser("export", help="write a trained model as PyTorch-readable parts: a "
                     "transformers LLM, the vision tower, the compressor")
  p.add_argument("checkpoint", help="run workdir, `longvid import` output, or a params "
                 "directory inside one")
  p.add_argument("--to", choices=["hf"], default="hf", help="output format (default: hf)")
  p.add_argument("out", help="directory to write llm/, vision/, compressor/ and longvid.json into")
  p.set_defaults(func=_export)

  p = sub.add_parser("import", help="build a params checkpoint from exported parts, for "
                     "`longvid run --set model.init_from=OUT_CKPT`")
  p.add_argument("source", nargs="?", default=None,
                 help="directory `longvid export` wrote (optional when parts are given below)")
  p.add_argument("out_ckpt", help="directory to write params/ and config.json into")
  p.add_argument("--config", help="config (path.py[:arg]) of the model to build (default: the "
                 "export's longvid.json)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
  p.add_argument("--llm", help="Hugging Face LLM directory / hub id (default: SOURCE/llm)")
  p.add_argument("--vision", help="vision tower directory (default: SOURCE/vision)")
  p.add_argument("--compressor", help="exported compressor (default: SOURCE/compressor)")
  p.set_defaults(func=_import)
