"""Privacy mechanisms: client-level differential privacy (DP-FedAvg, :mod:`fedit.privacy.dp`,
:mod:`fedit.privacy.dp_strategy`, accounted by :mod:`fedit.privacy.accounting`) and secure
aggregation (:mod:`fedit.privacy.secagg`; the Flower side is fedit.runners.flower.secagg).
What each guarantees, and against whom: docs/privacy.md."""
