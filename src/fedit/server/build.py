"""A run's strategy from its config: the registered class with explicit keyword arguments, then
the registered wrappers (fedit.registry). A strategy's keyword arguments are matched by name to
config fields (``FedAvgM(server_lr=...)`` <- ``--server-lr``), so a method's settings have one
definition (the config field, with its default and help) and no hand-written plumbing."""

from __future__ import annotations

import inspect
from typing import Any

from fedit.config import Config
from fedit.registry import STRATEGIES, WRAPPERS, load
from fedit.server.strategy import Strategy

BASE_KWARGS = ("num_clients", "clients_per_round", "seed")


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return load(STRATEGIES[name])


def method_kwargs(cls: type[Strategy], cfg: Config) -> dict[str, Any]:
    """The keyword arguments ``cls`` declares beyond the base ones, read from the config
    (``server_lr`` resolved: an unset --server-lr takes the strategy's default, see
    fedit.config.default_server_lr)."""
    flat = {**cfg.flat(), "server_lr": cfg.federation.effective_server_lr}
    kwargs = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, param in inspect.signature(vars(klass)["__init__"]).parameters.items():
            if name == "self" or name in BASE_KWARGS or name in kwargs or \
                    param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            if name not in flat:
                raise TypeError(f"{cls.__name__}({name}=...): no config field named {name!r}")
            kwargs[name] = flat[name]
    return kwargs


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """The strategy registered under ``name``, built from explicit keyword arguments."""
    return strategy_class(name)(**kwargs)


def build_strategy(cfg: Config, num_clients: int) -> Strategy:
    """The run's strategy for ``num_clients`` clients, wrapped as the config asks."""
    cls = strategy_class(cfg.federation.strategy)
    strategy = cls(num_clients=num_clients, clients_per_round=cfg.federation.clients_to_sample(num_clients),
                   seed=cfg.federation.seed, **method_kwargs(cls, cfg))
    for path in WRAPPERS.values():
        strategy = load(path)(strategy, cfg)
    return strategy
