"""Federated methods as units: one module per method (options, capabilities, server and client
half), registered through the ``fedit.methods`` entry points (fedit.registry)."""

from fedit.method_api import KINDS, Capabilities, ClientKey, Lazy, Method, option

__all__ = ["KINDS", "Capabilities", "ClientKey", "Lazy", "Method", "option"]
