"""A run's strategy from its config: the registered class with explicit keyword arguments, then
the registered wrappers (fedit.registry). A strategy's keyword arguments are matched by name to
config fields (``FedAvgM(server_lr=...)`` <- ``--server-lr``), so a method's settings have one
definition (the config field, with its default and help) and no hand-written plumbing."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from fedit.client_lora import ClientLora, canonical_targets, differing, listed_layouts, resolve_clients
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.registry import STRATEGIES, WRAPPERS, load
from fedit.server.strategy import Strategy, StrategyWrapper

BASE_KWARGS = ("num_clients", "clients_per_round", "seed", "client_lora")
CLIENT_FLAGS = ("--client-ranks", "--client-targets")


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
    for path in WRAPPERS.values():
        strategy = load(path)(strategy, cfg)
    if cfg.privacy.secure_aggregation:
        check_sums_suffice(strategy)
    return strategy


def check_methods(cfg: Config, layouts: Sequence[ClientLora] | None = None,
                  flags: tuple[str, str] = CLIENT_FLAGS) -> None:
    """Refuse, in one line naming the flags, a combination of --strategy, --lora-aggregation and
    per-client adapters (--client-ranks/--client-targets, or the nodes' ``flags``) that makes no sense.
    Every runner calls it before it writes anything; ``layouts``: the clients' adapters once known
    (default: every rank and module list the flags name). Client modules are checked against the
    model (fedit.model.client_adapters.check_client_targets)."""
    cls, agg, lora_r = strategy_class(cfg.federation.strategy), cfg.lora.lora_aggregation, cfg.lora.lora_r
    strategy = f"--strategy {cfg.federation.strategy}"
    if agg == "product-svd" and cls.factor_state:
        fits = ", ".join(n for n in STRATEGIES if not strategy_class(n).factor_state)
        raise ConfigError(f"{strategy} keeps server state per coordinate of the LoRA factors, which --lora-aggregation "
                          f"product-svd re-factors every round: use --strategy {fits} with it, or another "
                          "--lora-aggregation")
    if agg == "ffa" and cls.needs_full_adapter:
        raise ConfigError(f"{strategy} needs every client to train the whole adapter, but --lora-aggregation ffa "
                          "never trains A: use another --lora-aggregation")
    if layouts is None:
        ranks, targets = listed_layouts(cfg.lora.client_ranks, cfg.lora.client_targets)
    else:
        ranks, targets = [lay.rank for lay in layouts], [lay.targets for lay in layouts]
    ranks_flag, targets_flag = flags
    pooling = [flag for flag, on in (("--dp-clip", cfg.privacy.dp), ("--secure-aggregation",
                                                                      cfg.privacy.secure_aggregation)) if on]
    if pooling and cls.needs_each_update:
        raise ConfigError(f"{pooling[0]} releases only the mean of the clients' updates, but {cls.needs_each_update} "
                          "needs each client's own reply: drop one of them")
    if pooling and agg == "product-svd":
        raise ConfigError(f"{pooling[0]} releases only the mean of the clients' factors, but --lora-aggregation "
                          "product-svd needs each client's own B and A: use factors, zero-pad or ffa with it")
    uneven = any(r != lora_r for r in ranks) or any(t != canonical_targets(cfg.lora.lora_targets) for t in targets)
    robust = cfg.robustness.robust
    if robust != "none" and (pooling or uneven or agg == "product-svd"):
        why = pooling[0] if pooling else f"{ranks_flag}/{targets_flag}" if uneven else "--lora-aggregation product-svd"
        raise ConfigError(f"--robust {robust} compares the clients' updates coordinate by coordinate; it does not "
                          f"combine with {why}, which "
                          + ("releases only their mean" if pooling else "gives them different shapes" if uneven
                             else "needs each client's own factors and re-factors their products")
                          + ": drop one of them")
    if cfg.communication.compress != "none" and cfg.privacy.secure_aggregation:
        raise ConfigError(f"--compress {cfg.communication.compress} codes each update for the server to decode, but "
                          "--secure-aggregation gives the server only their masked sum: drop one of them")
    if pooling and uneven:
        raise ConfigError(f"{pooling[0]} sums updates of one shape, but {ranks_flag}/{targets_flag} give clients "
                          "adapters of different shapes: drop one of them")
    if any(t != canonical_targets(cfg.lora.lora_targets) for t in targets) and cls.needs_full_adapter:
        raise ConfigError(f"{strategy} needs every client to train the whole adapter: it does not combine with "
                          f"{targets_flag}")
    if not ranks:
        return
    if max(ranks) > lora_r:
        raise ConfigError(f"{ranks_flag}: rank {max(ranks)} is larger than --lora-r {lora_r} (the global adapter "
                          "has the largest rank: raise --lora-r)")
    if min(ranks) < lora_r and cls.needs_full_adapter:
        raise ConfigError(f"{strategy} needs every client to train the whole adapter: it does not combine with "
                          f"{ranks_flag} below --lora-r {lora_r}")
    if min(ranks) < lora_r and agg == "factors":
        raise ConfigError(f"--lora-aggregation factors averages factors of one shape, but {ranks_flag} gives ranks "
                          f"below --lora-r {lora_r}: use --lora-aggregation zero-pad, ffa or product-svd")
    if max(ranks) < lora_r and agg in ("zero-pad", "ffa"):
        raise ConfigError(f"--lora-r {lora_r} is larger than every rank of {ranks_flag} (at most {max(ranks)}): "
                          f"with --lora-aggregation {agg} the extra components are never trained; "
                          f"set --lora-r {max(ranks)}")
def check_sums_suffice(strategy: Strategy) -> None:
    """Refuse --secure-aggregation with a strategy or wrapper that must see each client's update."""
    while True:
        if strategy.needs_each_update:
            raise ConfigError(f"--secure-aggregation cannot be combined with {strategy.needs_each_update}: it needs "
                              "every client's own update, and secure aggregation gives the server only their sum")
        if not isinstance(strategy, StrategyWrapper):
            return
        strategy = strategy.inner
