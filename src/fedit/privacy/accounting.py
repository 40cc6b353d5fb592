"""Client-level privacy accounting for DP-FedAvg with Google's ``dp-accounting`` (RDP or PLD).

What one round releases, as the accountant sees it (``--client-sampling``, ``--dp-mode``):

* ``central``, ``fixed`` sampling (the default): fedit samples ``m`` of the ``N`` clients *without
  replacement* and adds N(0, (zC)^2) to the sum of their clipped updates. That is
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` under the *replace-one*
  neighbouring relation (the one dp-accounting supports for fixed-size sampling): replacing one
  client's data by another's moves the sum by up to 2C, so the noise is z/2 times the sensitivity.
* ``central``, ``poisson`` sampling: each client joins a round independently with probability
  q = m / N, and neighbouring datasets differ by *adding or removing* one client (the convention of
  TF Privacy, Opacus and Flower): the sum moves by up to C, so
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``. For the same z this gives a much smaller epsilon.
* ``local``: each client adds N(0, (zC)^2) to its own clipped update and the server sees it, so
  there is no amplification by sampling (and who took part is visible): ``GaussianDpEvent(z / 2)``
  per round under replace-one, composed over every round (a client sampled in all of them).

Adaptive clipping (``--dp-clip auto``) also releases a noised count of the clients whose update
was within the clip (each contributes a bit, sensitivity 1, noise std ``sigma_b``). Both Gaussians
see the same sampled clients, so the round is one Gaussian mechanism with the effective noise
multiplier 1 / sqrt(1/z_s^2 + 1/sigma_b^2), z_s being z (add/remove) or z/2 (replace-one)
(Andrew et al., NeurIPS 2021, Theorem 1).

Rounds compose: epsilon after T releases is the T-fold composition under the chosen accountant
(``--dp-accountant rdp|pld``). A round in which nothing was released costs nothing.
"""

from __future__ import annotations

import functools
import math

from fedit.errors import ConfigError

CENTRAL, LOCAL = "central", "local"
FIXED, POISSON = "fixed", "poisson"
RDP, PLD = "rdp", "pld"
ADD_REMOVE, REPLACE_ONE = "add/remove", "replace-one"


def _dp():
    try:
        from dp_accounting import dp_event
        from dp_accounting.pld import PLDAccountant
        from dp_accounting.privacy_accountant import NeighboringRelation
        from dp_accounting.rdp import RdpAccountant
    except ImportError:
        raise ConfigError("--dp-clip: privacy accounting needs Google's dp-accounting "
                          "(pip install 'fedit[privacy]')") from None
    return dp_event, NeighboringRelation, RdpAccountant, PLDAccountant


def relation(mode: str, sampling: str) -> str:
    """The neighbouring relation of a run: add/remove under Poisson sampling in central mode, else
    replace-one."""
    return ADD_REMOVE if mode == CENTRAL and sampling == POISSON else REPLACE_ONE


def effective_noise(noise_multiplier: float, rel: str, count_noise: float | None = None) -> float:
    """The noise multiplier of the round's Gaussian in units of its sensitivity (see the module
    docstring): z (add/remove) or z / 2 (replace-one), combined with the count's ``count_noise``."""
    z = noise_multiplier if rel == ADD_REMOVE else noise_multiplier / 2.0
    if count_noise is None:
        return z
    if count_noise <= 0 or z <= 0:
        return 0.0
    return 1.0 / math.sqrt(1.0 / z ** 2 + 1.0 / count_noise ** 2)


def round_event(mode: str, num_clients: int, per_round: int, noise_multiplier: float,
                sampling: str = FIXED, count_noise: float | None = None):
    """The dp-accounting event of one round (see the module docstring)."""
    dp_event = _dp()[0]
    gaussian = dp_event.GaussianDpEvent(effective_noise(noise_multiplier, relation(mode, sampling), count_noise))
    if mode == LOCAL or per_round >= num_clients:
        return gaussian
    if sampling == POISSON:
        return dp_event.PoissonSampledDpEvent(per_round / num_clients, gaussian)
    return dp_event.SampledWithoutReplacementDpEvent(num_clients, per_round, gaussian)


def check_accountant(accountant: str, mode: str, sampling: str) -> None:
    """Refuse a combination dp-accounting cannot account (PLD has no fixed-size sampling)."""
    if accountant == PLD and mode == CENTRAL and sampling == FIXED:
        raise ConfigError("--dp-accountant pld: dp-accounting's PLD accountant has no fixed-size sampling "
                          "without replacement; use --client-sampling poisson or --dp-accountant rdp")


def fresh_accountant(accountant: str = RDP, rel: str = REPLACE_ONE):
    """An empty accountant of the kind asked for (RDP: default orders; PLD: dp-accounting's defaults)."""
    _, relations, rdp, pld = _dp()
    neighbours = relations.ADD_OR_REMOVE_ONE if rel == ADD_REMOVE else relations.REPLACE_ONE
    return pld(neighboring_relation=neighbours) if accountant == PLD else rdp(neighboring_relation=neighbours)


@functools.lru_cache(maxsize=256)
def epsilon(mode: str, num_clients: int, per_round: int, noise_multiplier: float, rounds: int,
            delta: float, sampling: str = FIXED, accountant: str = RDP, count_noise: float | None = None) -> float:
    """Epsilon at ``delta`` after ``rounds`` releases (inf without noise, 0 before any release)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0 or (count_noise is not None and count_noise <= 0):
        return math.inf
    check_accountant(accountant, mode, sampling)
    acc = fresh_accountant(accountant, relation(mode, sampling))
    acc.compose(round_event(mode, num_clients, per_round, noise_multiplier, sampling, count_noise), rounds)
    return float(acc.get_epsilon(delta))


def calibrate_noise(mode: str, num_clients: int, per_round: int, rounds: int, target_epsilon: float,
                    delta: float, tol: float = 1e-3, sampling: str = FIXED, accountant: str = RDP,
                    count_noise: float | None = None) -> float:
    """The smallest noise multiplier z (within ``tol``) whose epsilon after ``rounds`` releases is at
    most ``target_epsilon`` (dp-accounting's calibration: bracket search, then Brent's method)."""
    dp_event = _dp()[0]
    from dp_accounting import mechanism_calibration as mc

    check_accountant(accountant, mode, sampling)
    rel = relation(mode, sampling)

    def event(z: float):
        return dp_event.SelfComposedDpEvent(round_event(mode, num_clients, per_round, z, sampling, count_noise), rounds)

    try:
        return float(mc.calibrate_dp_mechanism(lambda: fresh_accountant(accountant, rel), event, target_epsilon,
                                               delta, mc.LowerEndpointAndGuess(tol, 1.0), tol=tol))
    except (mc.NoBracketIntervalFoundError, ValueError):
        raise ConfigError(f"--dp-target-epsilon {target_epsilon}: no noise multiplier reaches it in "
                          f"{rounds} rounds at --dp-delta {delta}") from None


def describe(mode: str, sampling: str, accountant: str, adaptive: bool = False) -> str:
    """One line naming how epsilon was computed (metrics and the model card)."""
    how = ("no sampling amplification (local noise)" if mode == LOCAL else
           "Poisson sampling" if sampling == POISSON else "fixed-size sampling without replacement")
    extra = ", with the adaptive clip's noised count" if adaptive else ""
    return f"{accountant.upper()} accountant (dp-accounting), {how}, {relation(mode, sampling)} neighbours{extra}"
