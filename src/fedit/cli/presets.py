"""``fedit config``: the presets and config files without starting anything. ``list`` the presets,
``show`` a preset or file fully resolved (its ``base:``, then flags: a dry run of what a run would
use), ``cp`` a preset into a file to edit (like torchtune's ``tune ls`` / ``tune cp``)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from fedit.cli.args import DEFAULT_PRESET, add_config_flags, config_from_args, config_source
from fedit.config import BASE_KEY, dump_config, preset_names, preset_text
from fedit.errors import ConfigError
from fedit.fileio import atomic_write_text

# The commands that start from each preset when --config is not given.
PRESET_USERS = {DEFAULT_PRESET: "fedit run, partition, deploy", "cpu-small": "fedit experiment"}


def summary(name: str) -> str:
    """A preset's leading comment, without the ``# NAME:`` prefix and the example commands."""
    words = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("#   "):
            words.append(line.lstrip("# "))
    return " ".join(words).removeprefix(f"{name}:").strip()


def cmd_list(args: argparse.Namespace) -> int:
    for name in preset_names():
        users = f" Default of {PRESET_USERS[name]}." if name in PRESET_USERS else ""
        print(name)
        print(textwrap.fill(summary(name) + users, 100, initial_indent="    ", subsequent_indent="    ",
                            break_on_hyphens=False))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    args.config = args.name
    cfg = config_from_args(args)
    print(f"# fedit config show: {config_source(args)}\n# (load it with --config FILE: every key is set)\n"
          f"{dump_config(cfg)}", end="")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    if args.name not in preset_names():
        raise ConfigError(f"NAME: '{args.name}' is not a preset ({', '.join(preset_names())}); "
                          "to copy a file, use cp")
    target = Path(args.file)
    if target.is_dir():
        raise ConfigError(f"{target}: is a folder; name the file to write")
    if target.exists() and not args.force:
        raise ConfigError(f"{target}: exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise ConfigError(f"{target}: no such folder {target.parent}")
    text = preset_text(args.name)
    head = [line for line in text.splitlines() if line.startswith("#")]
    body = text.splitlines()[len(head):]
    lines = [*head, f"# Copied by `fedit config cp {args.name}`: it builds on preset {args.name}, so a key removed",
             f"# keeps {args.name}'s value; edit the values, then: fedit run --config {target.name} --out ...",
             f"{BASE_KEY}: {args.name}", *body]
    atomic_write_text(target, "\n".join(lines) + "\n")
    print(target)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="list, show (resolved, with flags: a dry run) and copy config presets",
                       description="Config presets and files: a file builds on the preset its 'base:' names "
                                   f"(default {DEFAULT_PRESET}; fedit experiment: cpu-small), flags on top.")
    verbs = p.add_subparsers(dest="verb", required=True, parser_class=type(p))
    ls = verbs.add_parser("list", help="the presets, each with its summary")
    ls.set_defaults(func=cmd_list)
    show = verbs.add_parser("show", help="a preset or file fully resolved, flags applied, as YAML (a dry run)",
                            description="Print the whole config a run would use: the preset or file, what it "
                                        "builds on, and the flags given; nothing is loaded or written.")
    show.add_argument("name", nargs="?", default=DEFAULT_PRESET, metavar="NAME|FILE",
                      help=f"a preset ({', '.join(preset_names())}) or a YAML file (default {DEFAULT_PRESET})")
    add_config_flags(show)
    show.set_defaults(func=cmd_show)
    cp = verbs.add_parser("cp", help="copy a preset into a YAML file to edit")
    cp.add_argument("name", metavar="NAME", help=f"a preset ({', '.join(preset_names())})")
    cp.add_argument("file", metavar="FILE", help="the file to write")
    cp.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    cp.set_defaults(func=cmd_cp)
