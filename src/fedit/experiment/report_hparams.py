"""The report's hyperparameter table: every setting the systems were trained and evaluated with
(the resolved config by section, then the experiment's own settings), as a paper's appendix lists
them."""

from __future__ import annotations

from typing import Any

from fedit.experiment.table_files import Table


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "–"
    return "–" if value is None else str(value)


def hyperparameter_table(results: dict[str, Any]) -> Table:
    s = results["settings"]
    rows = [[section, name, _value(value)] for section, fields in (s.get("config") or {}).items()
            for name, value in fields.items()]
    gen, seeds, boot = s.get("generation", {}), s.get("seeds", {}), s.get("bootstrap", {})
    rows += [["experiment", name, _value(value)] for name, value in (
        ("local_baselines", s.get("local_baselines")), ("local_budget", s.get("budget_rule")),
        ("seeds", seeds.get("values")), ("vary_partition", seeds.get("vary_partition")),
        ("gen_records", gen.get("records")), ("max_new_tokens", gen.get("max_new_tokens")),
        ("test_records", s.get("test_records")), ("bootstrap_resamples", boot.get("resamples")),
        ("confidence", boot.get("confidence"))) if value is not None]
    judge = (results.get("judge") or {}).get("settings") or {}
    rows += [["judge", k, _value(v)] for k, v in judge.items() if k not in ("url", "key_env")]
    return ("Hyperparameters (the resolved config and the experiment's settings)", ["section", "setting", "value"],
            rows)
