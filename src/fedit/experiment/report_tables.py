"""The report's content, built from one results dict: tables, figures and summary lines (written
out as Markdown and HTML by fedit.experiment.report)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedit.data import plot_partition
from fedit.experiment.claims import FEDIT, METRICS, bootstrap_settings, fedit_verdict, interval
from fedit.experiment.prompts import PROMPTS
from fedit.experiment.plots import (category_figure, fedit_rounds, loss_rounds_figure, relative_figure,
                                    relative_title, save, training_figure)
from fedit.experiment.stats import paired_bootstrap
from fedit.experiment.training import loss_curve

Table = tuple[str, list[str], list[list[str]]]   # (title, header, rows)
STALE = " †"


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_stat(stat: dict[str, Any] | None, digits: int, seeds: int) -> str:
    """A mean over seeds: ``m`` for one seed, ``m ± sd`` (and the count when short) for several."""
    if not stat or stat.get("n", 0) == 0:
        return "–"
    text = fmt(stat["mean"], digits)
    if seeds > 1:
        text += f" ± {fmt(stat['sd'], digits)}" if stat.get("sd") is not None else " (1 seed)"
        if 1 < stat["n"] < seeds:
            text += f" ({stat['n']} seeds)"
    return text


def fmt_interval(c: dict[str, Any], digits: int = 4) -> str:
    if "skipped" in c:
        return f"not compared: {c['skipped']}"
    return f"{c['estimate']:+.{digits}f} [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"


def _name(results: dict[str, Any], name: str) -> str:
    return name + (STALE if name in results.get("stale", {}) else "")


def metric_tables(results: dict[str, Any], agg: dict[str, Any]) -> list[Table]:
    seeds = len(results.get("seeds") or [1])
    cats = sorted({c for a in agg.values() for c in a["per_category"]})
    out = []
    for title, key, digits in (("Held-out response loss (lower is better)", "loss", 4),
                               ("Held-out perplexity", "perplexity", 2),
                               ("ROUGE-L F1 of greedy answers (higher is better)", "rouge_l", 4)):
        rows = [[_name(results, n), *[fmt_stat(a["per_category"].get(c, {}).get(key), digits, seeds) for c in cats],
                 fmt_stat(a["overall"].get(key), digits, seeds)] for n, a in agg.items()]
        out.append((title + (f", mean ± sd over {seeds} seeds" if seeds > 1 else ""), ["system", *cats, "overall"],
                    rows))
    em_cats = [c for c in cats if any("exact_match" in a["per_category"].get(c, {}) for a in agg.values())]
    if em_cats:
        header = ["system", *[f"{c} EM" for c in em_cats], *[f"{c} contains" for c in em_cats]]
        rows = [[_name(results, n), *[fmt_stat(a["per_category"].get(c, {}).get("exact_match"), 3, seeds)
                                      for c in em_cats],
                 *[fmt_stat(a["per_category"].get(c, {}).get("contains_match"), 3, seeds) for c in em_cats]]
                for n, a in agg.items()]
        out.append(("Normalized exact match / contains-match (label-like categories)", header, rows))
    return out


def comparison_table(results: dict[str, Any], comps: dict[str, Any], ratios: dict[str, tuple]) -> Table | None:
    if not comps:
        return None
    conf = results["settings"].get("bootstrap", {}).get("confidence", 0.95)
    pairs = judge_pairwise(results)
    header = ["system", f"loss: system − FedIT [{conf:.0%} CI]", "loss verdict",
              f"ROUGE-L: system − FedIT [{conf:.0%} CI]", "ROUGE-L verdict", "ROUGE-L: system / FedIT"]
    if pairs:
        header += [f"judge: system total / FedIT total [{conf:.0%} CI]", "judge verdict", "verdicts",
                   "failed verdicts", "unscored questions"]
    rows = []
    for n, c in comps.items():
        row = [_name(results, n), fmt_interval(c["loss"]), c["loss"].get("verdict", "–"),
               fmt_interval(c["rouge_l"]), c["rouge_l"].get("verdict", "–"),
               fmt(ratios[n][0], 3) if n in ratios else "–"]
        if pairs:
            p, ci = pairs.get(n, {}), judge_intervals(results).get(n)
            row += [_ratio_cell(ci) if ci else "–", ci["verdict"] if ci else "–", fmt(p.get("verdicts")),
                    fmt(sum(p.get("failures", {}).values())) if p else "–", fmt(p.get("unscored_questions"))]
        rows.append(row)
    return ("Every system against FedIT (system − FedIT, system / FedIT; the verdict needs the interval to "
            "exclude no change)", header, rows)


def _ratio_cell(ci: dict[str, Any]) -> str:
    return f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def judge_pairwise(results: dict[str, Any]) -> dict[str, Any]:
    j = results.get("judge") or {}
    return j.get("pairs", {}) if j.get("mode", "pairwise") == "pairwise" else {}


def judge_intervals(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Relative judge score (system total / reference total) with its bootstrap interval over the
    scored questions, per judged system."""
    j = results.get("judge") or {}
    out = {}
    for name, p in j.get("pairs", {}).items():
        rows = [q for q in p.get("per_question", []) if q.get("score_a") is not None]
        if not rows:
            continue
        a = (np.array([q["score_a"] for q in rows], float), np.ones(len(rows)))
        b = (np.array([q["score_b"] for q in rows], float), np.ones(len(rows)))
        iv = paired_bootstrap([a], [b], ratio=True, **bootstrap_settings(results))
        out[name] = {**iv.record(), "verdict": fedit_verdict(iv, "judge", name, p.get("b", FEDIT), ratio=True)}
    return out


def relative_scores(results: dict[str, Any]) -> tuple[dict[str, tuple[float, float | None, float | None]], str]:
    """system -> (relative score, interval) against the reference (system / reference): the judge's
    total ratio when judged, else the ROUGE-L ratio against FedIT. Empty when nothing was scored."""
    j = results.get("judge")
    if j is not None:
        cis = judge_intervals(results)
        scores = {n: (c["estimate"], c["low"], c["high"]) for n, c in cis.items()}
        if j.get("mode") != "reference" and scores:
            scores = {FEDIT: (1.0, None, None), **scores}
        return scores, relative_title(j) if scores else ""
    runs = results.get("runs") or {}
    if FEDIT not in runs:
        return {}, ""
    out: dict[str, tuple] = {}
    for name in runs:
        iv = interval(runs, name, FEDIT, "rouge_l", ratio=True, **bootstrap_settings(results))
        if not isinstance(iv, str) and math.isfinite(iv.estimate):
            out[name] = (iv.estimate, iv.low if math.isfinite(iv.low) else None,
                         iv.high if math.isfinite(iv.high) else None)
    return (out, "ROUGE-L of each system / FedIT's") if len(out) > 1 else ({}, "")


def cost_table(results: dict[str, Any]) -> Table:
    seeds = len(results.get("seeds") or [1])
    header = ["system", "optimizer steps", "training tokens", "training time (s)", "evaluation time (s)",
              "bytes communicated"]
    rows = []
    for name, by_seed in (results.get("runs") or {}).items():
        rs = list(by_seed.values())
        msd = lambda vals, d: fmt_stat(_stat(vals), d, seeds)  # noqa: E731
        train = [r.get("train", {}) for r in rs]
        steps = [t.get("optimizer_steps", t.get("steps")) for t in train]
        nbytes = [sum(t["bytes"].values()) for t in train if t.get("bytes")]
        comm = "none (no federation)" if name != FEDIT else \
            (msd(nbytes, 0) if nbytes else "not recorded by this fedit version")
        rows.append([_name(results, name), msd(steps, 0), msd([t.get("tokens") for t in train], 0),
                     msd([t.get("seconds") for t in train], 1), msd([r.get("eval_seconds") for r in rs], 1), comm])
    return ("Training and cost per system" + (f" (mean ± sd over {seeds} seeds)" if seeds > 1 else ""), header, rows)


def _stat(values: list[Any]) -> dict[str, Any]:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    if not vals:
        return {"n": 0}
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "n": len(vals)}


def provenance_table(results: dict[str, Any]) -> Table | None:
    p = results.get("provenance")
    if not p:
        return None
    rows = [["fedit", f"{p.get('fedit')} (git {p.get('git') or 'unknown'})"], ["python", str(p.get("python"))]]
    rows += [[k, str(v)] for k, v in (p.get("libraries") or {}).items()]
    rows += [[f"machine: {k}", str(v)] for k, v in (p.get("machine") or {}).items()]
    return ("Provenance", ["item", "value"], rows)


def figures(results: dict[str, Any], agg: dict[str, Any], out: Path, partition: dict[str, Any]) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    for suffix in (".png", ".svg"):
        plot_partition(partition, out / f"categories{suffix}")
    figs["Records per category per client (paper Fig. 2)"] = out / "categories.png"
    seeds = [str(s) for s in results.get("seeds") or []]
    several = f"mean ± sd over {len(seeds)} seeds" if len(seeds) > 1 else "first seed"
    finals = {n: a["overall"]["loss"]["mean"] for n, a in agg.items() if a["overall"].get("loss", {}).get("n")}
    rounds = [r for i, s in enumerate(seeds or ["0"]) if (r := fedit_rounds(
        out / "systems" / ("" if i == 0 else f"seed-{s}") / "fedit" / "metrics.jsonl"))]
    if rounds or finals:
        figs[f"Global held-out loss per round ({several})"] = save(loss_rounds_figure(rounds, finals),
                                                                   out / "loss_per_round.png")
    curves = {n: c for n, by_seed in results["runs"].items() if (c := [x for r in by_seed.values() if (x := loss_curve(r))])}
    if curves:
        figs[f"Training loss of every system ({several})"] = save(training_figure(curves), out / "training_loss.png")
    per_cat = {n: {c: v["loss"]["mean"] for c, v in a["per_category"].items() if "loss" in v} for n, a in agg.items()}
    if any(per_cat.values()):
        figs["Held-out loss per category"] = save(category_figure(per_cat, "held-out response loss"),
                                                  out / "per_category.png")
    scores, label = relative_scores(results)
    for suffix in (".png", ".svg"):                           # never leave an earlier run's chart behind
        (out / f"relative_scores{suffix}").unlink(missing_ok=True)
    if scores:
        ref = (results.get("judge") or {}).get("reference", FEDIT)
        title = "Relative score against the reference answers (paper Fig. 3)" if ref != FEDIT else \
            "Relative score against FedIT"
        figs[title] = save(relative_figure(scores, ref, label), out / "relative_scores.png")
    return figs


def summary_lines(results: dict[str, Any]) -> list[str]:
    s, c, cfg = results["settings"], results.get("claims", {}), results["settings"]["config"]
    seeds = results.get("seeds") or [cfg["federation"]["seed"]]
    lines = [f"Model `{cfg['model']['model']}`, data `{cfg['data']['data']}` ({cfg['data']['partition']} "
             f"partition), {cfg['federation']['rounds']} rounds of {cfg['federation']['clients_per_round']} "
             f"clients ({cfg['federation']['strategy']}); held-out `{cfg['data']['test_data']}`: "
             f"{s['test_records']} records for loss, {s['generation']['records']} generated greedily "
             f"(max {s['generation']['max_new_tokens']} new tokens).",
             f"Seeds: {', '.join(map(str, seeds))}" + (
                 " (each with its own data split, --vary-partition)" if s.get("seeds", {}).get("vary_partition")
                 else " (training seeds; one data split)" if len(seeds) > 1 else "") + ".",
             f"Budget rule: {s['budget_rule']}"]
    if len(seeds) > 1:
        lines.append("The untuned base model does not depend on the training seed: it is evaluated once per data "
                     "split, and paired with every seed of the other systems.")
    mix = s.get("local_mix", {})
    if mix:
        lines.append("Local clients, chosen for different category mixes (largest client first, then each the "
                     "farthest in total variation from those chosen): " + "; ".join(
                         f"**{n}** = client {results['local_clients'][n]} ("
                         + ", ".join(f"{c} {k}" for c, k in m.items()) + ")" for n, m in mix.items()))
    lines.append("Systems: " + "; ".join(f"**{x['name']}**: {x['description']}" for x in s["systems"]))
    boot = s.get("bootstrap", {})
    lines.append(f"Noise: every verdict rests on a paired bootstrap over test records ({boot.get('resamples', 2000)} "
                 f"resamples{', seeds resampled too' if len(seeds) > 1 else ''}; {boot.get('confidence', 0.95):.0%} "
                 "interval); a difference whose interval includes zero is reported as within noise, identical "
                 "scores as a tie.")
    for metric, (_, words) in METRICS.items():
        if f"fedit_beats_all_local_{metric}" in c:
            lines.append(f"FedIT beats every local-only system on {words}: **{c[f'fedit_beats_all_local_{metric}']}**.")
        if c.get(f"recovered_{metric}") is not None:
            lines.append(f"FedIT recovers **{100 * c[f'recovered_{metric}']:.0f}%** of centralized's {words} "
                         "improvement over base (point estimate).")
    if results.get("stale"):
        lines.append(f"{STALE.strip()} Evaluated with other settings than this run's (kept from earlier runs; "
                     "their held-out loss is compared, their generated answers are not; rerun them with "
                     "`--systems` to re-evaluate): " + "; ".join(
                         f"**{n}** ({', '.join(f'{k} {v}' for k, v in e.items() if k != 'decoding')})"
                         for n, e in results["stale"].items()) + ".")
    j = results.get("judge")
    if j:
        js = j.get("settings", {})
        prompt = js.get("prompt", "fedit")
        lines.append(f"Judge: `{js.get('model')}` with the **{prompt}** prompt ({PROMPTS[prompt].description}), "
                     f"max {js.get('max_tokens')} reply tokens, {js.get('repeats')} verdicts per order, temperature {js.get('temperature')}, "
                     f"{j.get('questions')} questions from `{j.get('question_source')}`; "
                     + (f"every system judged against the reference answers of {j.get('reference_label')}"
                        if j.get("mode") == "reference" else "every system judged against FedIT") + ".")
        for n, why in (j.get("skipped") or {}).items():
            lines.append(f"Not judged: **{n}** ({why}).")
    return lines
