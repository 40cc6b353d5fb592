"""A run's strategy from its config: the registered strategy's class with explicit keyword arguments,
then the wrappers of the run's other methods (fedit.registry), innermost first: privacy (DP-FedAvg),
the learning-rate schedule, the robust defence, the codec. A strategy's keyword arguments are matched
by name to config fields (``FedAvgM(server_lr=...)`` <- ``--server-lr``), so a method's settings have
one definition (its options field, with its default and help) and no hand-written plumbing. Which
methods combine: fedit.server.compat."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from fedit import registry
from fedit.client_lora import ClientLora, canonical_targets, differing, resolve_clients
from fedit.server import compression
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.server import defences, personal, scheduled
from fedit.server.compat import CLIENT_FLAGS, check_methods
from fedit.server.strategy import Strategy, StrategyWrapper

__all__ = ["CLIENT_FLAGS", "build_strategy", "check_methods", "check_sums_suffice", "make_strategy", "strategy_class"]

BASE_KWARGS = ("num_clients", "clients_per_round", "seed", "client_lora")


def strategy_class(name: str) -> type[Strategy]:
    """The server half of the strategy registered as ``name`` (ConfigError naming the known ones)."""
    return registry.method("strategy", name).half("server")


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


def global_lora(cfg: Config) -> ClientLora:
    """The global adapter's layout (--lora-r, --lora-targets)."""
    return ClientLora(cfg.lora.lora_r, canonical_targets(cfg.lora.lora_targets))


def client_layouts(cfg: Config, num_clients: int) -> list[ClientLora]:
    """Every client's adapter layout from --client-ranks / --client-targets (the global one by default)."""
    lora = cfg.lora
    return resolve_clients(lora.lora_r, lora.lora_targets, lora.client_ranks, lora.client_targets,
                           cfg.federation.seed, num_clients)


def build_strategy(cfg: Config, num_clients: int,
                   client_lora: Sequence[ClientLora] | dict[int, ClientLora] | None = None) -> Strategy:
    """The run's strategy for ``num_clients`` clients, wrapped as the config asks. ``client_lora``:
    every client's adapter layout when the runner knows it (a Flower run: from the nodes); by
    default it follows --client-ranks / --client-targets."""
    cls = strategy_class(cfg.federation.strategy)
    layouts = client_layouts(cfg, num_clients) if client_lora is None else client_lora
    strategy = cls(num_clients=num_clients, clients_per_round=cfg.federation.clients_to_sample(num_clients),
                   seed=cfg.federation.seed, client_lora=differing(layouts, global_lora(cfg)),
                   **method_kwargs(cls, cfg))
    strategy = personal.wrap(strategy, cfg)   # innermost: what the clients keep is never aggregated
    for method in registry.methods("privacy"):
        if method.server is not None and method.active(cfg):
            strategy = method.half("server")(strategy, cfg)
    for wrap in (scheduled.wrap, defences.wrap, compression.wrap):
        strategy = wrap(strategy, cfg)
    if cfg.privacy.secure_aggregation:
        check_sums_suffice(strategy)
    return strategy


def check_sums_suffice(strategy: Strategy) -> None:
    """Refuse --secure-aggregation with a strategy or wrapper that must see each client's update."""
    while True:
        if strategy.needs_each_update:
            raise ConfigError(f"--secure-aggregation cannot be combined with {strategy.needs_each_update}: it needs "
                              "every client's own update, and secure aggregation gives the server only their sum")
        if not isinstance(strategy, StrategyWrapper):
            return
        strategy = strategy.inner
