"""`fedit audit`: what an attacker actually learns from a run, measured next to the accountant's epsilon.

- :mod:`fedit.audit.update_attack`: an honest-but-curious server's membership inference on one
  client's update, as the server sees it under the run's mechanisms;
- :mod:`fedit.audit.canary_audit`: the exposure of canaries inserted before training
  (``--audit-canaries``) and a membership test on the released adapter, turned into an empirical
  lower bound on epsilon (:mod:`fedit.audit.stats`);
- :mod:`fedit.audit.run`: both on a finished run, written to ``RUN/audit.json``.
"""
