"""``fedit export``: the parser and the command (torch-free at import)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from fedit.cli.args import add_config_flags
from fedit.cli.use import add_client_flag, given_flags
from fedit.config import ExportConfig

DESCRIPTION = ("Export a tuned model: the adapter merged into its base model as a plain transformers folder "
               "in the base's dtype (or the adapter alone with --no-merge), with tokenizer, chat template, "
               "generation config and a model card (README.md); optionally upload it with --push-to-hub. "
               "See docs/usage-after-training.md for serving it (transformers serve, vLLM, llama.cpp).")


def cmd_export(args: argparse.Namespace) -> int:
    from fedit.runners.source import resolve_source
    from fedit.export.hub import push_folder
    from fedit.export.merge import export_model

    names = {f.name for f in dataclasses.fields(ExportConfig)}
    settings = ExportConfig(**{k: v for k, v in vars(args).items() if k in names})
    source = resolve_source(given_flags(args), run=args.run, adapter=args.adapter, client=args.client)
    out = export_model(source, args.out, settings)
    url = push_folder(out, settings.push_to_hub, private=settings.private) if settings.push_to_hub else None
    print(json.dumps({"out": str(out), "merged": settings.merge, "pushed": url}))
    return 0


def add_parser(sub) -> None:
    exp = sub.add_parser("export", help="merge the adapter into its base model (or export the adapter) "
                                       "as a folder transformers, vLLM and the hub take",
                         description=DESCRIPTION)
    exp.add_argument("--run", help="a fedit run directory: its final adapter and base model")
    exp.add_argument("--adapter", help="a PEFT adapter folder (e.g. RUN/final); its base model comes from its "
                                       "adapter_config.json unless --model is given")
    add_client_flag(exp)
    exp.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    add_config_flags(exp, ["model"])
    add_config_flags(exp, sections={"export": ExportConfig})
    exp.set_defaults(func=cmd_export)
