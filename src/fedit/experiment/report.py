"""The experiment's report: results.json (machine-readable), report.md and a self-contained
report.html (the same tables, PNG figures embedded as base64), built from one results dict."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from fedit.data import plot_partition
from fedit.experiment.plots import fedit_rounds, plot_loss_rounds, plot_relative, relative_scores
from fedit.fileio import atomic_write_text

Table = tuple[str, list[str], list[list[str]]]   # (title, header, rows)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def claims(results: dict[str, Any]) -> dict[str, Any]:
    """The paper's claim, checked: FedIT vs every local-only system, and the share of centralized's
    improvement over base that FedIT recovers, on held-out loss and ROUGE-L."""
    s = {n: r["overall"] for n, r in results["systems"].items()}
    out: dict[str, Any] = {}
    if "fedit" not in s:
        return out
    locals_ = [n for n in s if n.startswith("local-")]
    for metric, better in (("loss", min), ("rouge_l", max)):
        f = s["fedit"].get(metric)
        if f is None:
            continue
        if locals_:
            out[f"fedit_beats_all_local_{metric}"] = all(better(f, s[n][metric]) == f and f != s[n][metric]
                                                         for n in locals_)
        if "base" in s and "centralized" in s:   # only meaningful when centralized improved on base
            gain = s["centralized"][metric] - s["base"][metric]
            improved = better(s["centralized"][metric], s["base"][metric]) == s["centralized"][metric]
            out[f"recovered_{metric}"] = (f - s["base"][metric]) / gain if gain and improved else None
    return out


def tables(results: dict[str, Any]) -> list[Table]:
    systems = results["systems"]
    cats = sorted({c for r in systems.values() for c in r["per_category"]})
    pairs = results.get("judge", {}).get("pairs", {})
    out = []
    for title, key, digits in (("Held-out response loss (lower is better)", "loss", 4),
                               ("Held-out perplexity", "perplexity", 2),
                               ("ROUGE-L F1 of greedy answers (higher is better)", "rouge_l", 4)):
        header = ["system", *cats, "overall"]
        rows = [[n, *[_fmt(r["per_category"].get(c, {}).get(key), digits) for c in cats],
                 _fmt(r["overall"].get(key), digits)] for n, r in systems.items()]
        out.append((title, header, rows))
    em_cats = [c for c in cats if any("exact_match" in r["per_category"].get(c, {}) for r in systems.values())]
    if em_cats:
        header = ["system", *[f"{c} EM" for c in em_cats], *[f"{c} contains" for c in em_cats]]
        rows = [[n, *[_fmt(r["per_category"].get(c, {}).get("exact_match"), 3) for c in em_cats],
                 *[_fmt(r["per_category"].get(c, {}).get("contains_match"), 3) for c in em_cats]]
                for n, r in systems.items()]
        out.append(("Normalized exact match / contains-match (label-like categories)", header, rows))
    fedit = systems.get("fedit")
    if fedit:
        header = ["baseline", "FedIT loss − baseline loss", "FedIT ROUGE-L / baseline's"]
        if pairs:
            header += ["judge: FedIT total / baseline total", "verdicts", "failed verdicts", "unscored questions"]
        rows = []
        for n, r in systems.items():
            if n == "fedit":
                continue
            f, b = fedit["overall"], r["overall"]
            ratio = f["rouge_l"] / b["rouge_l"] if b.get("rouge_l") else None
            row = [n, _fmt(f["loss"] - b["loss"]), _fmt(ratio, 3)]
            if pairs:
                p = pairs.get(n, {})
                row += [_fmt(p.get("relative"), 3), _fmt(p.get("verdicts")),
                        _fmt(sum(p.get("failures", {}).values())), _fmt(p.get("unscored_questions"))]
            rows.append(row)
        out.append(("Relative score of FedIT against each baseline", header, rows))
    return out


def examples(results: dict[str, Any], test: Sequence[Any], n: int) -> list[dict[str, Any]]:
    """``n`` generated test records (different categories first) with every system's answer (the
    paper's Table 3)."""
    systems = results["systems"]
    first = next(iter(systems.values()), None)
    if not first or n == 0:
        return []
    answers = first["answers"]
    seen: set[str] = set()
    picks = [p for p, a in enumerate(answers) if a["category"] not in seen and not seen.add(a["category"])]
    picks = (picks + [p for p in range(len(answers)) if p not in picks])[:n]   # one per category first
    out = []
    for pos in picks:
        ex = test[answers[pos]["test_index"]]
        out.append({"instruction": ex.instruction, "context": ex.context, "category": ex.category,
                    "reference": ex.response,
                    "answers": {name: r["answers"][pos]["answer"] for name, r in systems.items()
                                if len(r["answers"]) > pos}})
    return out


def figures(results: dict[str, Any], out: Path, partition: dict[str, Any]) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    plot_partition(partition, out / "categories.png")
    figs["Records per category per client (paper Fig. 2)"] = out / "categories.png"
    finals = {n: r["overall"]["loss"] for n, r in results["systems"].items()}
    p = plot_loss_rounds(fedit_rounds(out / "systems" / "fedit" / "metrics.jsonl"), finals, out / "loss_per_round.png")
    if p:
        figs["Global held-out loss per round"] = p
    scores, label = relative_scores(results)
    p = plot_relative(scores, label, out / "relative_scores.png")
    if p:
        figs[f"Relative score against FedIT: {label} (paper Fig. 3)"] = p
    return figs


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def _summary_lines(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    c, lines = results.get("claims", {}), []
    cfg = s["config"]
    lines.append(f"Model `{cfg['model']['model']}`, data `{cfg['data']['data']}` ({cfg['data']['partition']} "
                 f"partition), {cfg['federation']['rounds']} rounds of {cfg['federation']['clients_per_round']} "
                 f"clients ({cfg['federation']['strategy']}), seed {cfg['federation']['seed']}; held-out "
                 f"`{cfg['data']['test_data']}`: {s['test_records']} records for loss, "
                 f"{s['generation']['records']} generated greedily "
                 f"(max {s['generation']['max_new_tokens']} new tokens).")
    lines.append(f"Budget rule: {s['budget_rule']}")
    mix = s.get("local_mix", {})
    if mix:
        lines.append("Local clients, chosen for different category mixes (largest client first, then each the "
                     "farthest in total variation from those chosen): " + "; ".join(
                         f"**{n}** = client {results['local_clients'][n]} ("
                         + ", ".join(f"{c} {k}" for c, k in m.items()) + ")" for n, m in mix.items()))
    lines.append("Systems: " + "; ".join(f"**{x['name']}**: {x['description']}" for x in s["systems"]))
    mb = results["systems"].get("fedit", {}).get("train", {}).get("communication_mb")
    if mb:
        lines.append(f"FedIT communication (FlowerTune-style total, both directions): **{mb:.1f} MB**; "
                     f"robust aggregation `{cfg.get('robustness', {}).get('robust', 'none')}`, update "
                     f"compression `{cfg.get('communication', {}).get('compress', 'none')}`.")
    for metric, name in (("loss", "held-out loss"), ("rouge_l", "ROUGE-L")):
        if f"fedit_beats_all_local_{metric}" in c:
            lines.append(f"FedIT beats every local-only system on {name}: "
                         f"**{'yes' if c[f'fedit_beats_all_local_{metric}'] else 'no'}**.")
        if c.get(f"recovered_{metric}") is not None:
            lines.append(f"FedIT recovers **{100 * c[f'recovered_{metric}']:.0f}%** of centralized's "
                         f"{name} improvement over base.")
    return lines


def write_markdown(results: dict[str, Any], figs: dict[str, Path], out: Path) -> Path:
    parts = ["# fedit experiment: base vs local-only vs centralized vs FedIT", ""]
    parts += [f"- {line}" for line in _summary_lines(results)] + [""]
    for title, header, rows in tables(results):
        parts += [f"## {title}", "", _md_table(header, rows), ""]
    for title, path in figs.items():
        parts += [f"## {title}", "", f"![{title}]({path.name})", ""]
    if results.get("examples"):
        parts += ["## Example responses", ""]
        for ex in results["examples"]:
            parts += [f"**[{ex['category']}] {ex['instruction']}**", ""]
            rows = [["reference", ex["reference"]]] + [[n, a] for n, a in ex["answers"].items()]
            parts += [_md_table(["system", "response"], rows), ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;"
       "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}"
       "td{white-space:pre-wrap}img{max-width:100%}")


def write_html(results: dict[str, Any], figs: dict[str, Path], out: Path) -> Path:
    def md_inline(text: str) -> str:
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            pieces = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
        return text
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fedit experiment</title>"
             f"<style>{CSS}</style></head><body><h1>fedit experiment: base vs local-only vs centralized vs FedIT</h1>",
             "<ul>" + "".join(f"<li>{md_inline(line)}</li>" for line in _summary_lines(results)) + "</ul>"]
    for title, header, rows in tables(results):
        parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")
    for title, path in figs.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    if results.get("examples"):
        parts.append("<h2>Example responses</h2>")
        for ex in results["examples"]:
            rows = [["reference", ex["reference"]]] + [[n, a] for n, a in ex["answers"].items()]
            title = f"[{ex['category']}] {ex['instruction']}"
            ctx = f"<p><i>{html.escape(ex['context'][:600])}</i></p>" if ex["context"] else ""
            parts.append(f"<h3>{html.escape(title)}</h3>{ctx}{_html_table(['system', 'response'], rows)}")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def write_report(results: dict[str, Any], out: Path, partition: dict[str, Any], test: Sequence[Any],
                 n_examples: int) -> dict[str, Path]:
    """Write results.json, the figures, report.md and report.html into ``out``."""
    results["claims"] = claims(results)
    results["examples"] = examples(results, test, n_examples)
    results["settings"]["partition"] = partition
    slim = {**results, "systems": {n: {k: v for k, v in r.items() if k != "answers"}
                                   for n, r in results["systems"].items()}}
    atomic_write_text(out / "results.json", json.dumps(slim, indent=2, default=float) + "\n")
    figs = figures(results, out, partition)
    return {"results": out / "results.json", "markdown": write_markdown(results, figs, out),
            "html": write_html(results, figs, out), **{p.stem: p for p in figs.values()}}
