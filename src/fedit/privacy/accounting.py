"""Client-level privacy accounting for DP-FedAvg with Google's ``dp-accounting`` (RDP).

What one round releases, as the accountant sees it:

* ``central``: fedit samples ``m`` of the ``N`` clients *without replacement* (a fixed number per
  round, :class:`fedit.server.sampling.ClientSampler`) and adds N(0, (zC)^2) to the sum of their
  clipped updates. That is ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``
  under the *replace-one* neighbouring relation (the one dp-accounting supports for fixed-size
  sampling): replacing one client's data by another's moves the sum by up to 2C (two updates of
  norm <= C), so the noise is z/2 times the sensitivity, not z.
* ``local``: each client adds N(0, (zC)^2) to its own clipped update and the server sees it, so
  there is no amplification by sampling: ``GaussianDpEvent(z / 2)`` per round, composed over every
  round (the worst case: a client sampled in all of them). The released adapter is a
  post-processing of what the server saw, so the same epsilon bounds it too.

Rounds compose: epsilon after T releases is the RDP of the T-fold composition, converted to
(epsilon, delta). A round in which nothing was aggregated released nothing and costs nothing.
"""

from __future__ import annotations

import functools
import math

from fedit.errors import ConfigError

CENTRAL, LOCAL = "central", "local"


def _dp():
    try:
        import dp_accounting
        from dp_accounting import dp_event
        from dp_accounting.privacy_accountant import NeighboringRelation
        from dp_accounting.rdp import RdpAccountant
    except ImportError:
        raise ConfigError("--dp-clip: privacy accounting needs Google's dp-accounting "
                          "(pip install 'fedit[privacy]')") from None
    return dp_accounting, dp_event, NeighboringRelation, RdpAccountant


def round_event(mode: str, num_clients: int, per_round: int, noise_multiplier: float):
    """The dp-accounting event of one round (see the module docstring)."""
    _, dp_event, _, _ = _dp()
    gaussian = dp_event.GaussianDpEvent(noise_multiplier / 2.0)  # replace-one: sensitivity 2C
    if mode == LOCAL or per_round >= num_clients:
        return gaussian
    return dp_event.SampledWithoutReplacementDpEvent(num_clients, per_round, gaussian)


def fresh_accountant():
    """An empty RDP accountant (default orders) for the replace-one relation."""
    _, _, relation, rdp = _dp()
    return rdp(neighboring_relation=relation.REPLACE_ONE)


@functools.lru_cache(maxsize=256)
def epsilon(mode: str, num_clients: int, per_round: int, noise_multiplier: float, rounds: int,
            delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` releases (inf without noise, 0 before any release)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = fresh_accountant()
    accountant.compose(round_event(mode, num_clients, per_round, noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))


def calibrate_noise(mode: str, num_clients: int, per_round: int, rounds: int, target_epsilon: float,
                    delta: float, tol: float = 1e-3) -> float:
    """The smallest noise multiplier z (within ``tol``) whose epsilon after ``rounds`` releases is at
    most ``target_epsilon`` (dp-accounting's calibration: bracket search, then Brent's method)."""
    _, dp_event, _, _ = _dp()
    from dp_accounting import mechanism_calibration as mc

    def event(z: float):
        return dp_event.SelfComposedDpEvent(round_event(mode, num_clients, per_round, z), rounds)

    try:
        return float(mc.calibrate_dp_mechanism(fresh_accountant, event, target_epsilon, delta,
                                               mc.LowerEndpointAndGuess(tol, 1.0), tol=tol))
    except mc.NoBracketIntervalFoundError:
        raise ConfigError(f"--dp-target-epsilon {target_epsilon}: no noise multiplier reaches it in "
                          f"{rounds} rounds at --dp-delta {delta}") from None
