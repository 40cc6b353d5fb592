"""The report of `make gpu-check`: the issue's goals met or missed, and the markdown table (gpu.md)."""

from __future__ import annotations

GOALS = {"mfu": 0.35, "together": 0.6, "nf4_gb": 16.0}


def _result(results: dict, step: str) -> dict:
    for s in results["steps"]:
        if s["step"] == step:
            return s.get("result") or {}
    return {}


def goals(results: dict) -> dict:
    """Each GPU goal: the measured value and met (True/False), or None where it was not measured."""
    t, c, q = (_result(results, s) for s in ("throughput", "concurrency", "nf4"))
    if results["machine"].get("device") != "cuda":   # tiny shapes on CPU: plumbing, no goal applies
        t, c, q = {}, {}, {}
    mfu = (t.get("fedit") or {}).get("mfu_vs_datasheet")
    ratio = c.get("together_vs_alone_time")
    gb = q.get("peak_memory_gb")
    return {
        "mfu_1b_vs_datasheet": {"goal": f">= {GOALS['mfu']:.0%}", "value": mfu,
                                "met": None if mfu is None else mfu >= GOALS["mfu"]},
        "together_vs_alone_time": {"goal": f"<= {GOALS['together']}x", "value": ratio,
                                   "met": None if ratio is None else ratio <= GOALS["together"]},
        "nf4_8b_peak_gb": {"goal": f"< {GOALS['nf4_gb']:.0f} GB", "value": gb,
                           "met": None if gb is None else gb < GOALS["nf4_gb"]},
    }


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _mark(goal: dict) -> str:
    return {True: "met", False: "missed", None: "not measured"}[goal["met"]]


def table(results: dict) -> str:
    m = results["machine"]
    head = (f"GPU check on {m.get('gpu', 'CPU (GPU_CHECK_DEVICE=cpu, tiny shapes: plumbing only)')}, torch "
            f"{m['torch']} (CUDA {m.get('cuda')}), Python {m['python']}, git {results.get('git')}; "
            f"{results.get('total_s', 0):.0f} s of the {results['budget_s']:.0f} s budget\n")
    rows = ["| step | status | seconds (limit) | measured |", "|---|---|---|---|"]
    for s in results["steps"]:
        rows.append(f"| {s['step']} | {s['status']} | {_fmt(s.get('seconds'), '.0f')} ({_fmt(s.get('limit_s'), '.0f')}) "
                    f"| {_summary(s['step'], s.get('result') or {})} |")
    g = results.get("goals") or goals(results)
    rows += ["", "| goal | target | measured | |", "|---|---|---|---|",
             f"| 1B client update MFU (fused, vs data-sheet bf16) | {g['mfu_1b_vs_datasheet']['goal']} | "
             f"{_fmt(g['mfu_1b_vs_datasheet']['value'], '.1%')} | {_mark(g['mfu_1b_vs_datasheet'])} |",
             f"| round: clients together vs one after another | {g['together_vs_alone_time']['goal']} | "
             f"{_fmt(g['together_vs_alone_time']['value'], '.2f')}x | {_mark(g['together_vs_alone_time'])} |",
             f"| 8B NF4 + LoRA, batch 1 x 512: peak memory | {g['nf4_8b_peak_gb']['goal']} | "
             f"{_fmt(g['nf4_8b_peak_gb']['value'], '.1f')} GB | {_mark(g['nf4_8b_peak_gb'])} |"]
    return head + "\n" + "\n".join(rows) + "\n"


def _summary(step: str, r: dict) -> str:
    if "skipped" in r:
        return r["skipped"]
    if step == "tests" and "tests" in r:
        failed = f", failed: {', '.join(r['failed'])}" if r.get("failed") else ""
        return f"{r.get('passed', 0)} passed, {len(r.get('failed') or [])} failed, {r.get('skipped_tests', 0)} skipped{failed}"
    if step == "throughput" and "fedit" in r:
        parts = [f"{name} {r[name]['tokens_per_s']:.0f} tok/s (MFU {_fmt(r[name]['mfu_vs_datasheet'], '.1%')})"
                 for name in ("fedit", "fedit_peft_kernel", "plain_peft") if name in r]
        return f"{r['size']}, kernel {r['kernel']}: " + "; ".join(parts) + \
            f"; measured bf16 peak {r['peaks_flops']['measured'] / 1e12:.0f} TFLOP/s"
    if step == "concurrency" and "concurrent_round_s" in r:
        return (f"{r['clients']} clients: together {r['concurrent_round_s']:.2f} s vs one by one "
                f"{r['sequential_round_s']:.2f} s ({r['together_vs_alone_time']:.2f}x)")
    if step == "nf4" and "step_s" in r:
        return (f"{r['size']} {r['quantize']}, kernel {r['kernel']}: step {r['step_s']:.2f} s, "
                f"{r['tokens_per_s']:.0f} tok/s, peak {_fmt(r['peak_memory_gb'], '.1f')} GB")
    if step == "paper" and "paper_estimate_s" in r:
        return (f"{r['size']}: {r['tokens_per_s']:.0f} tok/s -> paper's setting ~{r['paper_estimate_s'] / 3600:.2f} h "
                f"({r['paper_train_tokens'] / 1e6:.1f} M training tokens)")
    return "-"
