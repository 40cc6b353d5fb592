"""Placeholder: the subcommand of this package is being written (registers nothing yet)."""


def add_parser(subparsers, add_config_flags, config_from_args) -> None:
    return None
