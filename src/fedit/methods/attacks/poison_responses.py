"""poison-responses: every attacker's instruction gets the response of its next record (fluent but wrong
answers). Data poisoning before training: fedit.attacks.swap_responses."""

from fedit.methods.attacks.common import ATTACK, Attackers
from fedit.method_api import Lazy, Method

METHOD = Method("poison-responses", "attack", "data poisoning: the attackers' responses shuffled within each client",
                order=22, options=(Attackers,), capabilities=ATTACK, section="robustness",
                server=Lazy("fedit.attacks:swap_responses"))
