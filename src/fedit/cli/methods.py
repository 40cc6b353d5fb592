"""``fedit methods``: every federated method, built-in or from a plugin (the fedit.methods entry points)."""

from __future__ import annotations

import argparse
import json


def cmd_methods(args: argparse.Namespace) -> int:
    from fedit.methods.listing import describe, render

    rows = describe()
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0


def add_parser(sub) -> None:
    meth = sub.add_parser("methods", help="list every federated method: built-in and plugins (entry points)",
                          description="Every method registered in the fedit.methods entry-point group: kind, name, "
                                      "the distribution it comes from, summary, options with defaults, capabilities.")
    meth.add_argument("--json", action="store_true", help="one JSON list, for tools")
    meth.set_defaults(func=cmd_methods)
