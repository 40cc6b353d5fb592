"""What the round loop writes about a round: one client record per update (metrics.jsonl) and
the one log line a round ends with."""

from __future__ import annotations

from typing import Any, Mapping


def client_entry(round_idx: int, client: int, count: int | None, claimed: int | None,
                 metrics: Mapping[str, Any], norm: float | None = None) -> dict[str, Any]:
    """A ``type: client`` record: the count the client was weighted by (and its own claim where
    that differs), its delta's norm when the server saw the update, its metrics under ``metrics``."""
    entry: dict[str, Any] = {"type": "client", "round": round_idx, "client": client, "num_examples": count}
    if claimed is not None and claimed != count:
        entry["claimed_examples"] = claimed
    if norm is not None:
        entry["update_norm"] = norm
    return {**entry, "metrics": dict(metrics)}


def _num(value: Any, spec: str) -> str:
    """A logged number (None where metrics.jsonl holds a non-finite value)."""
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def round_summary(record: dict[str, Any], rounds: int) -> str:
    """The one log line a round ends with."""
    parts = [f"round {record['round']}/{rounds}"]
    if record.get("clients") is not None:
        parts.append(f"clients {record['clients']}")
    if "train_loss" in record:
        parts.append(f"train loss {_num(record['train_loss'], '.4f')}")
    ev = (record.get("eval") or {}).get("overall")
    if ev:
        parts.append(f"eval loss {_num(ev.get('loss'), '.4f')} ppl {_num(ev.get('perplexity'), '.2f')}")
    if "lora_gap_mean" in record:
        parts.append(f"lora gap {_num(record['lora_gap_mean'], '.3g')}")
    if "svd_energy_dropped_mean" in record:
        parts.append(f"svd drop {_num(record['svd_energy_dropped_mean'], '.3g')}")
    if "dp_epsilon" in record:
        parts.append(f"DP epsilon {_num(record['dp_epsilon'], '.3g')} (delta {record['dp_delta']:.0e})")
    if record.get("robust_rejected"):
        parts.append(f"rejected {record['robust_rejected']}")
    if record.get("robust_clipped"):
        parts.append(f"clipped {record['robust_clipped']}")
    if record.get("dropped"):
        parts.append(f"dropped {len(record['dropped'])}")
    if "bytes_down_total" in record:
        parts.append(f"comm {_mb(record['bytes_down'])}/{_mb(record['bytes_up'])} MB down/up, "
                     f"total {_mb(record['bytes_down_total'] + record['bytes_up_total'])} MB")
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    return " | ".join(parts)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g}"
