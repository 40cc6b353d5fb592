"""Any report table as files a paper takes: Markdown, CSV and LaTeX (booktabs), written side by side
(``write_table``). A table is ``(title, header, rows)`` of strings, as the report builds them; other
reports (e.g. per-client tables) use the same functions."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from fedit.fileio import atomic_write_text

Table = tuple[str, list[str], list[list[str]]]   # (title, header, rows)

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
        "—": "---", "†": r"$^\dagger$", "×": r"$\times$", "→": r"$\rightarrow$", "≤": r"$\leq$", "≥": r"$\geq$"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX))


def slug(title: str) -> str:
    """A file name from a table title: its words up to the first parenthesis, comma or colon."""
    head = re.split(r"[(,:]", title, maxsplit=1)[0]
    return re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_") or "table"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def tex_escape(text: str) -> str:
    return _TEX_RE.sub(lambda m: _TEX[m.group(0)], " ".join(str(text).split()))


_NUMERIC = re.compile(r"^[\s\d.eE+\-±–\[\],%]*$")   # numbers, mean ± sd, [low, high] intervals, –


def latex(title: str, header: list[str], rows: list[list[str]], label: str | None = None) -> str:
    """A ``table`` float with a booktabs ``tabular`` (``\\usepackage{booktabs}``): numeric columns
    right-aligned, the others left, the title as its caption."""
    line = lambda cells: " & ".join(tex_escape(c) for c in cells) + r" \\"   # noqa: E731
    align = "".join("r" if i and rows and all(_NUMERIC.match(r[i]) for r in rows if i < len(r)) else "l"
                    for i in range(len(header)))
    body = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{tex_escape(title)}}}",
            *([rf"\label{{tab:{label}}}"] if label else []), rf"\begin{{tabular}}{{{align}}}",
            r"\toprule", line(header), r"\midrule", *(line(r) for r in rows), r"\bottomrule", r"\end{tabular}",
            r"\end{table}"]
    return "% written by fedit; needs \\usepackage{booktabs}\n" + "\n".join(body) + "\n"


def write_table(table: Table, folder: Path, stem: str | None = None) -> dict[str, Path]:
    """``folder/STEM.md``, ``.csv`` and ``.tex`` of one table (STEM: from its title); their paths."""
    title, header, rows = table
    stem = stem or slug(title)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"md": f"## {title}\n\n{markdown(header, rows)}\n", "csv": csv_text(header, rows),
             "tex": latex(title, header, rows, stem)}
    paths = {}
    for kind, text in texts.items():
        paths[kind] = folder / f"{stem}.{kind}"
        atomic_write_text(paths[kind], text)
    return paths


def write_tables(tables: list[Table], folder: Path) -> dict[str, dict[str, Path]]:
    """Every table in ``folder`` (a title seen twice gets _2, _3...); {stem: its paths}."""
    out: dict[str, dict[str, Path]] = {}
    for table in tables:
        stem, n = slug(table[0]), 2
        while stem in out:
            stem, n = f"{slug(table[0])}_{n}", n + 1
        out[stem] = write_table(table, folder, stem)
    return out
