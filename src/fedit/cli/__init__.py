"""The ``fedit`` command line: one module per command group, the dispatcher in :mod:`fedit.cli.main`."""

from fedit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
