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
