"""poison-responses: every attacker's instruction gets the response of its next record (fluent but wrong
answers). Data poisoning before training: fedit.attacks.swap_responses."""

from fedit.methods.attacks.common import ATTACK, Attackers
from fedit.methods.base import Lazy, Method

METHOD = Method("poison-responses", "attack", order=22, summary="data poisoning: the attackers' responses shuffled within each client",
                options=(Attackers,), capabilities=ATTACK, section="robustness",
                server=Lazy("fedit.attacks:swap_responses"))
