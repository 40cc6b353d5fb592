"""The commands that use a tuned model (``--run`` or ``--adapter``, see fedit.runners.source):
``fedit eval`` (held-out loss), ``fedit generate`` (one prompt, or a file of prompts) and
``fedit chat`` (in the terminal). Torch-free at import (the parser is built for every ``fedit``
command); the work is imported when a command runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from fedit.cli.args import DEFAULT_PRESET, EPILOG, add_config_flags
from fedit.config import SECTIONS, SamplingConfig

SOURCE_FLAGS = ["model", "device", "precision", "template", "seed"]


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a fedit run directory: its final adapter, base model and template")
    parser.add_argument("--adapter", help="a PEFT adapter folder (e.g. RUN/final); its base model comes from "
                                          "its adapter_config.json unless --model is given")
    add_config_flags(parser, SOURCE_FLAGS)
    add_config_flags(parser, sections={"sampling": SamplingConfig})


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config flags the user passed (flags default to 'not given')."""
    owners = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in owners}


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    names = {f.name for f in dataclasses.fields(SamplingConfig)}
    return SamplingConfig(**{k: v for k, v in vars(args).items() if k in names})


def _load(args: argparse.Namespace):
    import torch

    from fedit.runners.source import load_source_model, resolve_source

    source = resolve_source(given_flags(args), run=args.run, adapter=args.adapter)
    bench = load_source_model(source)
    torch.manual_seed(source.cfg.federation.seed)   # sampling (--temperature > 0) is repeatable
    logging.getLogger("fedit.generate").info(precision_line(source.cfg.model.precision, bench.base.autocast_dtype))
    return source, bench


def precision_line(spec: str, autocast_dtype: Any) -> str:
    """The one line naming the precision ``fedit generate``/``chat`` compute in: bf16 autocast (as
    training on a bf16-capable device) drifts from an exported float32 model after some tokens."""
    if autocast_dtype is None:
        return (f"generation precision: fp32 (--precision {spec}); greedy answers match the exported float32 "
                "model token for token")
    return (f"generation precision: bf16 autocast, base weights bf16 (--precision {spec}, as in training); "
            "greedy answers can drift from the exported float32 model after some tokens: --precision fp32 "
            "matches it")


def cmd_eval(args: argparse.Namespace) -> int:
    from fedit.runners.source import evaluate_model
    from fedit.runners.source import resolve_source

    source = resolve_source(given_flags(args), run=args.run, adapter=args.adapter, preset=DEFAULT_PRESET)
    print(json.dumps(evaluate_model(source), indent=2, default=float))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from fedit.eval.chat import ChatSession, repl

    sampling = sampling_from_args(args)
    source, bench = _load(args)
    return repl(ChatSession(bench, source.cfg.data.template, sampling))


def cmd_generate(args: argparse.Namespace) -> int:
    from fedit.errors import ConfigError
    from fedit.eval.batch import answer_prompts, load_prompts
    from fedit.eval.sampling import generate_texts, instruction_prompt

    if (args.instruction is None) == (args.prompts is None):
        raise ConfigError("--prompts: give one instruction or --prompts FILE (- for stdin), not both or neither")
    sampling = sampling_from_args(args)
    prompts = load_prompts(args.prompts) if args.prompts is not None else None
    source, bench = _load(args)
    template = source.cfg.data.template
    if prompts is not None:
        answer_prompts(bench, prompts, template, sampling, sys.stdout)
        return 0
    prompt = instruction_prompt(bench.tokenizer, args.instruction, args.context, template, sampling.system)
    print(generate_texts(bench, [prompt], sampling)[0])
    return 0


def add_parser(sub) -> None:
    run_help = ("a run directory: its config.yaml gives the model, template, max length, test data and "
                "records, and its final/ the adapter; flags override")
    adapter_help = ("PEFT adapter folder (RUN/final, RUN/checkpoints/round_NNNN); its adapter_config.json names "
                    "the base model unless --model or --run is given. Omit for the base model")
    ev = sub.add_parser("eval", help="held-out loss/perplexity per category, as JSON", epilog=EPILOG,
                        description="Held-out loss of a base model, an adapter or a run (--run), evaluated "
                                    "as the run evaluates after every round.")
    ev.add_argument("--run", help=run_help)
    ev.add_argument("--adapter", help=adapter_help)
    add_config_flags(ev, ["model", "device", "precision", "test_data", "template", "max_len", "max_test_records",
                          "eval_batch_size", "seed", "columns"])
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="answer one instruction, or a file of prompts as JSON lines",
                         epilog=EPILOG)
    gen.add_argument("instruction", nargs="?", help="the instruction to answer (or use --prompts)")
    gen.add_argument("--context", default="", help="optional input/context for the instruction")
    gen.add_argument("--prompts", metavar="FILE", help="answer every prompt of FILE (- reads stdin): one "
                     "instruction per line, or JSON lines with instruction[/context], prompt or messages; "
                     "prints one JSON line per prompt")
    add_source_flags(gen)   # --run/--adapter, --model..., --temperature/--top-p/...
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="talk to a tuned model (streaming, multi-turn)",
                          description="An interactive chat with the model's chat template and the whole "
                                      "conversation as context. /reset clears it, /exit or Ctrl-D quits, "
                                      "Ctrl-C stops an answer. Answers go to stdout.")
    add_source_flags(chat)
    chat.set_defaults(func=cmd_chat)
