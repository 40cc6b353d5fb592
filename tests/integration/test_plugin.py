"""The example plugin (examples/plugin) installed into a fresh environment: `fedit methods` lists its two
methods, a tiny `fedit run` trains with both, and capabilities refuse what cannot combine."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory):
    """A venv on top of the project's (its site-packages added by a .pth) with the plugin `pip install -e`d."""
    env = tmp_path_factory.mktemp("plugin-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_fedit_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                    str(ROOT / "examples" / "plugin")], check=True, capture_output=True)
    return python


def fedit(python, *args):
    return subprocess.run([str(python), "-m", "fedit.cli", *args], capture_output=True, text=True)


def test_fedit_methods_lists_the_plugins_methods(plugin_python):
    res = fedit(plugin_python, "methods", "--json")
    assert res.returncode == 0, res.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(res.stdout)}
    median, fp16 = rows[("strategy", "example-median")], rows[("codec", "example-fp16")]
    assert median["distribution"] == fp16["distribution"] == "fedit-example-plugin"
    assert median["capabilities"] == {"needs_each_update": True, "coordinatewise": True, "uneven_ranks_ok": False}
    assert median["options"][0]["flag"] == "--median-warn-below" and median["options"][0]["default"] == 3
    assert rows[("strategy", "fedavg")]["distribution"] == "fedit"
    assert "strategy example-median options:" in fedit(plugin_python, "run", "--help").stdout


def test_secure_aggregation_with_example_median_is_refused_in_one_line(plugin_python, tmp_path, fixtures_dir):
    res = fedit(plugin_python, *run_args(fixtures_dir, tmp_path / "run"), "--strategy", "example-median",
                "--secure-aggregation")
    assert res.returncode != 0 and not (tmp_path / "run").exists()
    assert res.stderr.strip().splitlines()[-1] == ("fedit run: error: --secure-aggregation releases only the mean of the clients' "
                                  "updates, but --strategy example-median needs each client's own reply: drop one "
                                  "of them")


def run_args(fixtures_dir, out):
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "3",
            "--local-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--max-len", "64",
            "--rounds", "1", "--logger", "none", "--out", str(out)]


@pytest.mark.slow
def test_a_run_trains_with_the_plugins_strategy_and_codec(plugin_python, tmp_path, fixtures_dir):
    out = tmp_path / "run"
    res = fedit(plugin_python, *run_args(fixtures_dir, out), "--strategy", "example-median",
                "--compress", "example-fp16")
    assert res.returncode == 0, res.stderr[-2000:]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if r["type"] == "round"] == [0, 1]
    assert "example_median:" in (out / "config.yaml").read_text()
    assert (out / "final" / "adapter_model.safetensors").is_file()
