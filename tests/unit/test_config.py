"""Config validation names the flag to fix; presets and overrides compose."""

import pytest

from fedit.config import Config, dump_config, load_config, preset_names
from fedit.errors import ConfigError


def test_presets_load_and_default_is_cpu_demo():
    assert {"cpu-demo", "paper"} <= set(preset_names())
    paper = load_config("paper")
    assert (paper.data.num_clients, paper.data.alpha, paper.federation.rounds,
            paper.federation.clients_per_round, paper.train.local_epochs, paper.lora.lora_r,
            paper.lora.lora_targets, paper.train.batch_size, paper.train.lr, paper.data.max_len) == \
        (100, 0.5, 20, 5, 1.0, 8, "all-linear", 32, 1.5e-4, 512)


@pytest.mark.parametrize("overrides, flag", [
    ({"clients_per_round": 11, "num_clients": 10}, "--clients-per-round"),
    ({"lora_r": 0}, "--lora-r"),
    ({"lora_r": "x"}, "--lora-r"),
    ({"micro_batch_size": 3, "batch_size": 8}, "--batch-size"),
    ({"micro_batch_size": 16, "batch_size": 8}, "--micro-batch-size"),
    ({"lr": -1.0}, "--lr"),
    ({"fraction": 1.5}, "--fraction"),
    ({"max_len": 4}, "--max-len"),
    ({"partition": "random"}, "--partition"),
    ({"strategy": "fedavgg"}, "--strategy"),
    ({"lora_dropout": 1.0}, "--lora-dropout"),
    ({"train_on_prompt": 1}, "--train-on-prompt"),
    ({"robust": "mean"}, "--robust"),
    ({"trim_ratio": 0.5}, "--trim-ratio"),
    ({"krum_f": -1}, "--krum-f"),
    ({"max_update_norm": 0.0}, "--max-update-norm"),
    ({"max_client_examples": 0}, "--max-client-examples"),
    ({"max_client_share": 0.0}, "--max-client-share"),
    ({"attack": "ddos"}, "--attack"),
    ({"attackers": 1.0}, "--attackers"),
    ({"attack_noise_std": 0.0}, "--attack-noise-std"),
    ({"compress": "zip"}, "--compress"),
    ({"compress_block_size": 0}, "--compress-block-size"),
])
def test_invalid_values_name_the_flag(overrides, flag):
    with pytest.raises(ConfigError) as err:
        Config().override(overrides)
    assert str(err.value).startswith(flag + ":")
    assert "\n" not in str(err.value)


def test_override_and_roundtrip():
    cfg = load_config("cpu-demo").override({"lr": 1, "test_data": "none"})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.test_data is None
    import yaml
    assert Config.from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_fraction_replaces_clients_per_round():
    cfg = Config().override({"fraction": 0.25, "num_clients": 10})
    assert cfg.federation.clients_to_sample(10) == 2


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        load_config(str(bad))
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="--config: 'nope' is neither a preset"):
        load_config("nope")


def test_no_two_sections_define_the_same_flag():
    import dataclasses

    from fedit.config import EXTRA_SECTIONS, SECTIONS

    names = [f.name for cls in [*SECTIONS.values(), *EXTRA_SECTIONS.values()] for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)


def test_every_parser_builds_without_flag_conflicts():
    from fedit.cli import build_parser

    build_parser()  # argparse raises on a flag defined twice in one parser


def test_deploy_settings_are_validated_with_their_flag():
    from fedit.config import DeployConfig

    with pytest.raises(ConfigError, match="^--min-nodes: must be at least 1, got 0$"):
        DeployConfig(min_nodes=0)
    with pytest.raises(ConfigError, match="^--round-timeout: must be >= 0"):
        DeployConfig(round_timeout=-1.0)
    assert DeployConfig(min_nodes=2).nodes_to_wait_for == 2
    assert DeployConfig(min_nodes=2, wait_nodes=5).nodes_to_wait_for == 5


# --- issue 7: everyday correctness --------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"lr": float("inf")}, "--lr: must be a finite number, got inf"),
    ({"lr": float("nan")}, "--lr: must be a finite number, got nan"),
    ({"alpha": float("inf")}, "--alpha: must be a finite number, got inf"),
    ({"seed": -1}, "--seed: must be in [0, 2**63), got -1"),
    ({"seed": 2**63}, f"--seed: must be in [0, 2**63), got {2**63}"),
])
def test_non_finite_floats_and_out_of_range_seeds_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        Config().override(overrides)
    assert str(err.value) == message


def test_largest_seed_is_accepted():
    assert Config().override({"seed": 2**63 - 1}).federation.seed == 2**63 - 1


def test_too_many_clients_per_round_names_where_the_clients_came_from():
    cfg = Config().override({"clients_per_round": 3, "num_clients": 10})
    with pytest.raises(ConfigError, match=r"^--clients-per-round: 3 is more than the 2 clients "
                                          r"\(the files of --data x/\)$"):
        cfg.federation.clients_to_sample(2, "the files of --data x/")
    with pytest.raises(ConfigError, match=r"^--clients-per-round: 20 is more than the 10 clients \(--num-clients\)$"):
        Config().override({"clients_per_round": 20, "num_clients": 10})


def test_help_shows_the_preset_defaults_the_command_uses(capsys):
    from fedit.cli import main

    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    demo = load_config("cpu-demo")
    assert demo.federation.rounds == 3 and demo.train.lr == 3e-4
    assert "federated rounds (default: 3, from preset cpu-demo)" in text
    assert "(default: 0.0003, from preset cpu-demo)" in text
    assert "(default: 256, from preset cpu-demo)" in text
    assert "(default: 1.0)" in text                      # --grad-clip: the preset does not set it
    start = text.index("--train-on-prompt, --no-train-on-prompt")
    prompt_help = text[start:text.index("--max-len", start)]
    assert prompt_help.count("(default: False)") == 1    # --train-on-prompt's default, once
    assert "(default: response only)" not in text
    assert main(["experiment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "federated rounds (default: 5, from preset cpu-small)" in text
    assert main(["deploy", "local", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "federated rounds (default: 3, from preset cpu-demo)" in text


def test_readme_flag_table_matches_the_default_preset():
    """The README's table of main flags shows what a bare `fedit run` uses (preset cpu-demo)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in readme.splitlines() if line.startswith("| `--")}
    demo = load_config("cpu-demo")
    assert rows["`--lr`, `--batch-size`, `--micro-batch-size`"] == \
        f"{demo.train.lr:g}, {demo.train.batch_size}, {demo.train.micro_batch_size}"
    assert rows["`--rounds`, `--clients-per-round` / `--fraction`"] == \
        f"{demo.federation.rounds}, {demo.federation.clients_per_round}"
    assert rows["`--local-epochs` / `--local-steps`"] == f"{demo.train.local_epochs:g} / {demo.train.local_steps}"
    assert rows["`--template`, `--train-on-prompt`, `--max-len`"] == f"chat, off, {demo.data.max_len}"
    assert rows["`--num-clients`, `--partition`"] == f"{demo.data.num_clients}, {demo.data.partition}"


def test_version_flag(capsys):
    from fedit.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fedit ")


def test_method_declarations_stay_light_and_agree_with_their_strategy_classes():
    """Building every flag imports no torch (the methods' halves load on use), and the class attributes
    a strategy object still carries for wrappers agree with what its method declares."""
    import subprocess
    import sys

    code = "import sys, fedit.cli; fedit.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    from fedit import registry
    from fedit.server import strategy_class

    for m in registry.methods("strategy"):
        cls = strategy_class(m.name)
        assert cls.factor_state == m.capabilities.factor_state, m.name
        assert cls.needs_full_adapter == m.capabilities.needs_full_adapter, m.name
        assert bool(cls.needs_each_update) == m.capabilities.needs_each_update, m.name


def test_unknown_method_names_are_refused_with_the_known_ones():
    from fedit.errors import ConfigError
    from fedit.registry import method

    with pytest.raises(ConfigError, match=r"^unknown defence 'mean' \(known: median, trimmed-mean, krum, multi-krum, "
                                          r"norm-bound"):
        method("defence", "mean")
    with pytest.raises(ConfigError, match=r"^--robust: 'mean' is not one of none, median, trimmed-mean"):
        Config().override({"robust": "mean"})
