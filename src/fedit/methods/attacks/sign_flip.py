"""sign-flip: the attackers send sent - delta."""

from fedit.methods.attacks.common import ATTACK, MODEL_KEYS, Attackers, ModelAttack
from fedit.method_api import Method

METHOD = Method("sign-flip", "attack", "model poisoning: the attackers send their delta negated",
                order=20, options=(Attackers,), capabilities=ATTACK, section="robustness",
                client=ModelAttack("sign-flip"), client_keys=MODEL_KEYS)
