"""The experiment report's claims, ratios and figures on hand-made results (issue 7, item 19):
a tie is a tie, a difference inside the noise is not a win, one ratio convention in table and
chart, relative-score axes fitted to values near 1, no overlapping labels."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from fedit.data import Example, partition_stats
from fedit.experiment.report import write_report

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CATS = ("classification", "open_qa")


def _system(name: str, loss_sums: list[float], rouge: list[float], tokens: int = 10) -> dict:
    """A result.json of one system: per-record losses over len(loss_sums) records (``tokens`` each),
    ROUGE-L of one greedy answer per record."""
    n = len(loss_sums)
    cats = [CATS[i % 2] for i in range(n)]

    def per(cat_rows):
        loss = sum(loss_sums[i] for i in cat_rows) / (tokens * len(cat_rows))
        return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": tokens * len(cat_rows),
                "examples": len(cat_rows), "rouge_l": sum(rouge[i] for i in cat_rows) / len(cat_rows),
                "generated": len(cat_rows)}
    by_cat = {c: per([i for i in range(n) if cats[i] == c]) for c in CATS}
    return {"spec": {"name": name, "kind": "fedit" if name == "fedit" else "local", "client": None, "steps": 4,
                     "description": name},
            "eval_settings": {"gen_records": n, "max_new_tokens": 8, "em_categories": [], "decoding": "greedy"},
            "seed": 42, "train": {"steps": 4}, "seconds": 1.0, "overall": per(list(range(n))),
            "per_category": by_cat,
            "records": {"loss_sum": loss_sums, "tokens": [tokens] * n, "category": cats},
            "answers": [{"test_index": i, "category": cats[i], "answer": "a", "rouge_l": rouge[i]}
                        for i in range(n)]}


def _results(systems: dict[str, dict]) -> dict:
    cfg = {"model": {"model": "tiny-random"},
           "data": {"data": "d", "partition": "files", "test_data": "t"},
           "federation": {"rounds": 2, "clients_per_round": 2, "strategy": "fedavg", "seed": 42}}
    n = len(next(iter(systems.values()))["records"]["tokens"])
    return {"systems": systems, "local_clients": {n: 0 for n in systems if n.startswith("local-")},
            "settings": {"config": cfg, "budget_rule": "rule", "local_mix": {}, "test_records": n,
                         "systems": [s["spec"] for s in systems.values()],
                         "generation": {"records": n, "max_new_tokens": 8}}}


def _report(tmp_path, systems: dict[str, dict]) -> str:
    clients = [[Example("i", "", "r", c) for c in CATS]]
    write_report(_results(systems), tmp_path, partition_stats(clients), [], 0)
    return (tmp_path / "report.md").read_text()


def test_a_difference_inside_the_noise_is_not_a_win(tmp_path):
    # 16 records whose losses scatter by +-1.5 around 25 (loss 2.5 per token); FedIT's total is
    # 0.032 lower (0.0002 per token): far inside the record-to-record noise.
    rng = np.random.default_rng(0)
    local = list(25 + rng.uniform(-1.5, 1.5, 16))
    fedit = [v + rng.uniform(-1.5, 1.5) for v in local]
    shift = (sum(fedit) - sum(local) + 0.032) / 16
    fedit = [v - shift for v in fedit]
    assert (sum(local) - sum(fedit)) / 160 == pytest.approx(0.0002)
    rouge = [0.3] * 16
    md = _report(tmp_path, {"local-1": _system("local-1", local, rouge), "fedit": _system("fedit", fedit, rouge)})
    assert "FedIT beats every local-only system on held-out loss: **undecided**." in md
    assert "**yes**" not in md
    row = next(line for line in md.splitlines() if line.startswith("| local-1 | +0.0002 ["))
    assert "| within noise |" in row


def test_a_tie_is_a_tie(tmp_path):
    # every answer of every system scores ROUGE-L 0: not a loss for FedIT, a tie
    zeros = [0.0] * 8
    md = _report(tmp_path, {"local-1": _system("local-1", [20.0] * 8, zeros),
                            "fedit": _system("fedit", [20.0] * 8, zeros)})
    assert "FedIT beats every local-only system on ROUGE-L: **undecided**." in md
    assert "FedIT beats every local-only system on held-out loss: **undecided**." in md
    assert "**no**" not in md
    row = next(line for line in md.splitlines() if line.startswith("| local-1 |") and "tie" in line)
    assert row.count("| tie |") == 2


def test_a_clear_difference_is_claimed(tmp_path):
    # FedIT lower by exactly 1.0 on every record (0.1 per token): the interval is [0.1, 0.1]
    local = [30.0 + i for i in range(12)]
    md = _report(tmp_path, {"local-1": _system("local-1", local, [0.2] * 12),
                            "fedit": _system("fedit", [v - 1.0 for v in local], [0.2] * 12)})
    assert "FedIT beats every local-only system on held-out loss: **yes**." in md
    assert "| local-1 | +0.1000 [+0.1000, +0.1000] | FedIT better |" in md


def test_table_and_chart_use_one_ratio_convention(tmp_path):
    # ROUGE-L: local-1 0.2, FedIT 0.4 -> system / FedIT = 0.5 in the table and in the chart
    md = _report(tmp_path, {"local-1": _system("local-1", [20.0] * 6, [0.2] * 6),
                            "fedit": _system("fedit", [20.0] * 6, [0.4] * 6)})
    header = next(line for line in md.splitlines() if line.startswith("| system | loss"))
    row = next(line for line in md.splitlines() if line.startswith("| local-1 | +0.0000"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["ROUGE-L: system / FedIT"] == "0.500"
    from fedit.experiment.report_tables import relative_scores
    scores, label = relative_scores(_results({"local-1": _system("local-1", [20.0] * 6, [0.2] * 6),
                                              "fedit": _system("fedit", [20.0] * 6, [0.4] * 6)}) | {"runs": {
        "local-1": {"42": _system("local-1", [20.0] * 6, [0.2] * 6)},
        "fedit": {"42": _system("fedit", [20.0] * 6, [0.4] * 6)}}})
    assert scores["local-1"][0] == pytest.approx(0.5) and scores["fedit"][0] == pytest.approx(1.0)
    assert label == "ROUGE-L of each system / FedIT's"


def test_relative_axis_is_fitted_to_values_near_one():
    from fedit.experiment.plots import relative_figure

    fig = relative_figure({"fedit": (1.0, None, None), "base": (0.97, 0.95, 0.99), "local-1": (1.02, 1.0, 1.04)},
                          "fedit", "t")
    low, high = fig.axes[0].get_xlim()
    assert 0.9 < low < 0.95 and 1.04 < high < 1.1


def _overlaps(fig) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_loss_per_round_labels_do_not_overlap():
    from fedit.experiment.plots import loss_rounds_figure

    # local-1 and local-2 end 0.0001 apart: their labels used to sit on top of each other
    fig = loss_rounds_figure([(0, 2.74), (1, 2.68), (2, 2.62)],
                             {"base": 2.7443, "local-1": 2.6461, "local-2": 2.6462, "local-3": 2.6152,
                              "centralized": 2.5688, "fedit": 2.6235})
    assert _overlaps(fig) == []
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(re.match(r"local-1 .*2\.6461", t) for t in legend) and any("local-2" in t for t in legend)


def test_seeds_with_their_own_test_records_are_paired_by_seed():
    # --vary-partition: each seed answered other test records; comparisons pair the seeds, never cross them
    from fedit.experiment.claims import comparisons

    def run(name, seed, rouge, offset):
        r = _system(name, [20.0] * 4, rouge)
        for a in r["answers"]:
            a["test_index"] += offset
        return {**r, "seed": seed}
    runs = {"local-1": {"42": run("local-1", 42, [0.1] * 4, 0), "43": run("local-1", 43, [0.3] * 4, 10)},
            "fedit": {"42": run("fedit", 42, [0.2] * 4, 0), "43": run("fedit", 43, [0.5] * 4, 10)}}
    results = _results({n: r["42"] for n, r in runs.items()}) | {"runs": runs}
    c = comparisons(results)["local-1"]["rouge_l"]
    assert c["seeds"] == 2 and c["estimate"] == pytest.approx(((0.1 - 0.2) + (0.3 - 0.5)) / 2)
    assert c["verdict"] == "FedIT better"


# --- issue 19.9: a report that serves a paper ------------------------------------------------------

def test_figures_also_as_svg_tables_as_csv_and_latex_and_a_hyperparameter_table(tmp_path):
    md = _report(tmp_path, {"local-1": _system("local-1", [20.0, 22.0, 18.0, 20.0], [0.1] * 4),
                            "fedit": _system("fedit", [19.0, 21.0, 17.0, 19.0], [0.2] * 4)})
    pngs = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert pngs == ["categories", "loss_per_round", "per_category", "relative_scores"]
    assert sorted(p.stem for p in tmp_path.glob("*.svg")) == pngs
    assert all("<svg" in (tmp_path / f"{stem}.svg").read_text()[:2000] for stem in pngs)
    assert (tmp_path / "tables" / "held_out_response_loss.csv").read_text() == (
        "system,classification,open_qa,overall\nlocal-1,1.9000,2.1000,2.0000\nfedit,1.8000,2.0000,1.9000\n")
    tex = (tmp_path / "tables" / "held_out_response_loss.tex").read_text()
    assert "\\caption{Held-out response loss (lower is better)}\n\\label{tab:held_out_response_loss}\n" \
           "\\begin{tabular}{lrrr}\n\\toprule\nsystem & classification & open\\_qa & overall \\\\\n\\midrule\n" \
           "local-1 & 1.9000 & 2.1000 & 2.0000 \\\\\n" in tex
    assert "## Hyperparameters (the resolved config and the experiment's settings)" in md
    assert "| federation | rounds | 2 |" in md and "| model | model | tiny-random |" in md
    assert (tmp_path / "tables" / "hyperparameters.csv").read_text().splitlines()[:2] == [
        "section,setting,value", "model,model,tiny-random"]


def test_write_table_as_markdown_csv_and_latex(tmp_path):
    from fedit.experiment.table_files import write_table

    paths = write_table(("Clients: loss (per client)", ["client", "loss_sum"], [["a&b_1", "1.0 ± 0.1 †"]]), tmp_path)
    assert {k: p.name for k, p in paths.items()} == {"md": "clients.md", "csv": "clients.csv", "tex": "clients.tex"}
    assert paths["md"].read_text() == ("## Clients: loss (per client)\n\n| client | loss_sum |\n|---|---|\n"
                                       "| a&b_1 | 1.0 ± 0.1 † |\n")
    assert paths["csv"].read_text() == "client,loss_sum\na&b_1,1.0 ± 0.1 †\n"
    assert "client & loss\\_sum \\\\\n\\midrule\na\\&b\\_1 & 1.0 $\\pm$ 0.1 $^\\dagger$ \\\\\n\\bottomrule" in \
        paths["tex"].read_text()


def test_curves_of_several_seeds_are_drawn_as_a_band():
    from fedit.experiment.plots import loss_rounds_figure, training_figure

    fig = training_figure({"local-1": [[(1, 2.0), (2, 1.0)], [(1, 4.0), (2, 3.0)]], "fedit": [(4, 2.5)]})
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [3.0, 2.0]                 # the mean over the seeds
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert (band.min(), band.max()) == pytest.approx((2.0 - 2 ** 0.5, 3.0 + 2 ** 0.5))   # ± sd (ddof 1)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["local-1 (mean ± sd, 2 seeds)", "fedit"] and len(ax.collections) == 1
    rounds = loss_rounds_figure([[(0, 2.7), (1, 2.5)], [(0, 2.7), (1, 2.3)]], {"base": 2.74})
    assert list(rounds.axes[0].lines[0].get_ydata()) == pytest.approx([2.7, 2.4])
    assert len(rounds.axes[0].collections) == 1
