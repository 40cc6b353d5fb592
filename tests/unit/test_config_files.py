"""Config files build on a preset (``base:``, default: the preset of the command that reads them)."""

import argparse

import pytest

from fedit.cli.args import config_from_args, config_source
from fedit.config import dump_config, field_origins, load_config
from fedit.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return str(path)


def test_a_partial_file_builds_on_the_command_preset_not_on_the_paper_sizes(tmp_path):
    spec = write(tmp_path / "my.yaml", "federation: {rounds: 7}\n")
    cfg = load_config(spec, "cpu-demo")
    demo = load_config("cpu-demo")
    assert (cfg.federation.rounds, cfg.data.num_clients, cfg.train.batch_size, cfg.data.max_len, cfg.train.lr,
            cfg.train.local_steps) == (7, 10, 8, 256, 3e-4, 6)
    assert dump_config(cfg) == dump_config(demo.override({"rounds": 7}))
    # what the command reads it through: fedit run builds on cpu-demo, fedit experiment on cpu-small
    args = argparse.Namespace(config=spec, lr=1e-3)
    assert config_from_args(args).data.max_test_records == 40
    assert config_from_args(args, preset="cpu-small").data.max_test_records == 64
    assert config_from_args(args).train.lr == 1e-3
    assert config_source(args) == f"{spec} on preset cpu-demo, flags --lr"


def test_base_names_a_preset_or_a_file_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "paper7.yaml", "base: paper\nfederation: {rounds: 7}\n")
    spec = write(tmp_path / "top.yaml", "base: sub/paper7.yaml\ntrain: {lr: 1.0e-4}\n")
    cfg = load_config(spec, "cpu-demo")
    assert (cfg.federation.rounds, cfg.data.num_clients, cfg.train.batch_size, cfg.train.lr) == (7, 100, 32, 1e-4)
    origins = field_origins(spec, "cpu-demo")
    assert (origins["lr"], origins["rounds"], origins["num_clients"]) == (spec, str(tmp_path / "sub" / "paper7.yaml"),
                                                                         "preset paper")
    assert "local_steps" not in origins            # neither paper nor the files set it: the field's default
    assert config_source(argparse.Namespace(config=spec)) == \
        f"{spec} on {tmp_path / 'sub' / 'paper7.yaml'} on preset paper"


@pytest.mark.parametrize("text, message", [
    ("base: 3\n", "{spec}: base: expected a preset name (cpu-demo, cpu-small, paper) or a YAML file, got 3"),
    ("base: nope\n", "--config: '{dir}/nope' is neither a preset (cpu-demo, cpu-small, paper) nor a file"),
    ("base: my.yaml\n", "{spec}: base: builds on itself ({spec} -> {spec})"),
    ("train: {lr: -1}\n", "{spec} on preset cpu-demo: --lr: must be positive, got -1.0"),
    ("train: {lrr: 1}\n", "{spec}: unknown key 'train.lrr'"),
])
def test_bad_bases_and_values_name_the_file(tmp_path, text, message):
    spec = write(tmp_path / "my.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(spec, "cpu-demo")
    assert str(err.value) == message.format(spec=spec, dir=tmp_path)
