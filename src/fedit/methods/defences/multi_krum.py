"""multi-krum (El Mhamdi et al., 2018): the m - f updates of lowest Krum score reach the strategy."""

from fedit.method_api import Method
from fedit.methods.defences.krum import SELECTION, Options, Select, check

METHOD = Method("multi-krum", "defence", "keep the m-f updates of lowest Krum score (El Mhamdi et al., 2018)",
                order=17, options=(Options,), capabilities=SELECTION, section="robustness",
                server=Select(lambda m, f: max(1, m - f)), check=check)
