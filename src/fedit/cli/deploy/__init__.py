"""``fedit deploy ...``: the Flower deployment path of fedit (see docs/flower.md and DESCRIPTION below):
local, stop, simulate in deploy/local.py; superlink, supernode in deploy/servers.py; keygen, tls,
register-node, app, submit in deploy/tools.py."""

from __future__ import annotations

from fedit.cli.args import RawDescriptionHelpFormatter
from fedit.cli.deploy import local, servers, tools

DESCRIPTION = """\
Run fedit on Flower: a SuperLink (server) and one SuperNode per data owner (see docs/flower.md).

  local          SuperLink + one SuperNode per --node-data file on loopback, run, stop all
  stop           stop what a killed deploy local left running on --out
  simulate       the same Flower apps under Flower's Simulation Engine (Ray): virtual nodes
  superlink      start a SuperLink (TLS, SuperNode authentication) in the foreground
  supernode      start a SuperNode serving one data file (--data)
  keygen         make a SuperNode key pair (EC P-384, OpenSSH format)
  register-node  register a SuperNode's public key with a SuperLink
  tls            make a throw-away CA and server certificate (tests, trials)
  app            write the Flower app folder and run config, for flwr run by hand
  submit         submit a fedit run to a SuperLink and stream its log
"""


def add_parser(subparsers) -> None:
    deploy = subparsers.add_parser("deploy", help="run fedit on Flower (SuperLink/SuperNodes)",
                                   description=DESCRIPTION, formatter_class=RawDescriptionHelpFormatter)
    sub = deploy.add_subparsers(dest="deploy_command", required=True, parser_class=type(deploy))
    local.add_local(sub)
    local.add_stop(sub)
    local.add_simulate(sub)
    servers.add_superlink(sub)
    servers.add_supernode(sub)
    tools.add_keygen(sub)
    tools.add_register(sub)
    tools.add_tls(sub)
    tools.add_app(sub)
    tools.add_submit(sub)
