"""The experiment's report: results.json (machine-readable), report.md and a self-contained
report.html (the same tables, PNG figures embedded as base64), built from one results dict; every
figure also as SVG beside its PNG, every table also as ``tables/NAME.{md,csv,tex}``."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from fedit.experiment.claims import aggregate, claims, comparisons
from fedit.experiment.report_hparams import hyperparameter_table
from fedit.experiment.report_tables import (Table, comparison_table, cost_table, figures, judge_intervals,
                                            metric_tables, provenance_table, relative_scores, summary_lines)
from fedit.experiment.table_files import markdown, write_tables
from fedit.fileio import atomic_write_text


def tables(results: dict[str, Any], agg: dict[str, Any]) -> list[Table]:
    """Every table of the report, in order."""
    out = metric_tables(results, agg)
    ratios, _ = relative_scores({k: v for k, v in results.items() if k != "judge"})
    for table in (comparison_table(results, results.get("comparisons", {}), ratios), _reference_table(results),
                  cost_table(results), hyperparameter_table(results), provenance_table(results)):
        if table is not None:
            out.append(table)
    return out


def _reference_table(results: dict[str, Any]) -> Table | None:
    j = results.get("judge") or {}
    if j.get("mode") != "reference":
        return None
    conf = results["settings"].get("bootstrap", {}).get("confidence", 0.95)
    cis = judge_intervals(results)
    rows = []
    for n, p in j.get("pairs", {}).items():
        ci = cis.get(n)
        rows.append([n, f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–",
                     str(p.get("verdicts")), ", ".join(f"{k} {v}" for k, v in p.get("failures", {}).items()) or "0",
                     str(p.get("unscored_questions"))])
    return (f"Judge: every system against the reference answers of {j.get('reference_label')} (paper Fig. 3)",
            ["system", f"system total / reference total [{conf:.0%} CI]", "verdicts", "failed verdicts",
             "unscored questions"], rows)


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
                    "answers": {name: by_index[answers[pos]["test_index"]] for name, r in systems.items()
                                if answers[pos]["test_index"] in (by_index := {a["test_index"]: a["answer"]
                                                                              for a in r.get("answers", [])})}})
    return out


_md_table = markdown


def write_markdown(results: dict[str, Any], agg: dict[str, Any], figs: dict[str, Path], out: Path) -> Path:
    parts = ["# fedit experiment: base vs local-only vs centralized vs FedIT", ""]
    parts += [f"- {line}" for line in summary_lines(results)] + [""]
    for title, header, rows in tables(results, agg):
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


def write_html(results: dict[str, Any], agg: dict[str, Any], figs: dict[str, Path], out: Path) -> Path:
    def md_inline(text: str) -> str:
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            pieces = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
        return text
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fedit experiment</title>"
             f"<style>{CSS}</style></head><body><h1>fedit experiment: base vs local-only vs centralized vs FedIT</h1>",
             "<ul>" + "".join(f"<li>{md_inline(line)}</li>" for line in summary_lines(results)) + "</ul>"]
    for title, header, rows in tables(results, agg):
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
    results.setdefault("runs", {n: {str(r.get("seed", 0)): r} for n, r in results["systems"].items()})
    agg = aggregate(results["runs"])
    results["comparisons"] = comparisons(results)
    results["claims"] = claims(results, results["comparisons"])
    results["examples"] = examples(results, test, n_examples)
    results["settings"]["partition"] = partition
    results["summary"] = agg
    drop = ("answers", "records")
    slim = {**results, "systems": {n: {k: v for k, v in r.items() if k not in drop}
                                   for n, r in results["systems"].items()},
            "runs": {n: {s: {k: v for k, v in r.items() if k not in drop} for s, r in by_seed.items()}
                     for n, by_seed in results["runs"].items()}}
    atomic_write_text(out / "results.json", json.dumps(slim, indent=2, default=float) + "\n")
    figs = figures(results, agg, out, partition)
    written = write_tables(tables(results, agg), out / "tables")
    return {"results": out / "results.json", "markdown": write_markdown(results, agg, figs, out),
            "html": write_html(results, agg, figs, out), **{p.stem: p for p in figs.values()},
            **{f"table {stem}": paths["csv"] for stem, paths in written.items()}}
