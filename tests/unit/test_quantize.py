"""--quantize nf4|int8 (fedit.model.quantize): the one-line errors where it cannot run, the fused kernel's
refusal of quantized layers, and on CPU (bitsandbytes >= 0.48 runs there) a run, its eval, resume and export."""

import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main
from fedit.client.engines.fused import why_unsupported
from fedit.model import add_lora, quantize
from fedit.runners import simulation


def run_args(fixtures_dir, out, *extra):
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "2",
            "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--max-len", "64", "--out", str(out),
            *extra]


@pytest.fixture
def fresh_check():
    quantize.check_platform.cache_clear()
    yield
    quantize.check_platform.cache_clear()


def test_without_bitsandbytes_one_line_and_nothing_written(fixtures_dir, tmp_path, monkeypatch, capsys, fresh_check):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # import fails as if not installed
    assert main(run_args(fixtures_dir, tmp_path / "r", "--rounds", "1", "--quantize", "nf4")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fedit run: error: --quantize nf4: needs bitsandbytes, which is not installed: "
        "pip install 'fedit[quant]', or --quantize none")
    assert not (tmp_path / "r").exists()


def test_deploy_local_checks_quantize_before_starting_anything(fixtures_dir, tmp_path, monkeypatch, capsys,
                                                               fresh_check):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    assert main(["deploy", "local", "--out", str(tmp_path / "run"), "--model", "tiny-random", "--partition", "files",
                 "--clients-per-round", "1", "--node-data", str(fixtures_dir / "tiny" / "client_0.json"),
                 "--quantize", "int8"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fedit deploy: error: --quantize int8: needs bitsandbytes, which is not installed: "
        "pip install 'fedit[quant]', or --quantize none")
    assert list(tmp_path.iterdir()) == []


def test_a_platform_bitsandbytes_cannot_run_on_is_one_line(monkeypatch, fresh_check):
    def unsupported(*args, **kwargs):
        raise RuntimeError("no kernel registered for device cpu\nmore detail")

    fake = types.SimpleNamespace(__version__="9.9", nn=types.SimpleNamespace(Linear8bitLt=unsupported))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(quantize.ConfigError, match=r"^--quantize int8: bitsandbytes 9\.9 cannot run on cpu here "
                                                   r"\(no kernel registered for device cpu\); use --quantize none$"):
        quantize.check_platform("int8", "cpu")


def test_unknown_kind_is_refused_by_the_flag(fixtures_dir, tmp_path, capsys):
    assert main(run_args(fixtures_dir, tmp_path / "r", "--quantize", "fp8")) == 2
    assert capsys.readouterr().err == ("fedit run: error: argument --quantize: invalid choice: 'fp8' (choose from "
                                       "'none', 'nf4', 'int8') (see fedit run --help)\n")


bnb = pytest.importorskip("bitsandbytes")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256))


def test_4bit_layer_gradients_are_those_of_its_dequantized_weight():
    """bitsandbytes' CPU 4-bit kernel warns it has no autograd registration: its gradients are still exact."""
    layer = quantize.quantize_linear_layers(torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)), "nf4",
                                            torch.float32)[0]
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    for shape in [(1, 64), (3, 5, 64)]:
        x = torch.randn(*shape, requires_grad=True)
        y = layer(x)
        y.backward(torch.ones_like(y))
        x2 = x.detach().requires_grad_(True)
        (x2 @ weight.t()).backward(torch.ones_like(y))
        assert torch.equal(y, (x2 @ weight.t()).detach()) and torch.equal(x.grad, x2.grad)


def test_fused_kernel_refuses_quantized_base_layers():
    """Regression: a plain LoRA layer over a 4-bit layer (what peft builds when the model is not flagged as
    loaded in 4 bits, as benchmarks/gpu.py's was) passed the fused kernel's checks (Linear4bit is a torch
    Linear), which then concatenated the packed 4-bit weights and failed in its first step."""
    flagged = add_lora(quantize.quantize_linear_layers(tiny_llama(), "nf4", torch.float32), r=4, alpha=8,
                       dropout=0.0, targets="all-linear", seed=0)   # peft's own bitsandbytes LoRA layers
    assert why_unsupported(flagged) == "base_model.model.model.layers.0.self_attn.q_proj: not a plain LoRA linear layer"
    model = add_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, targets="all-linear", seed=0)
    up = model.base_model.model.model.layers[0].mlp.up_proj
    up.base_layer = quantize.quantize_linear_layers(torch.nn.Sequential(up.base_layer), "nf4", torch.float32)[0]
    assert why_unsupported(model) == ("base_model.model.model.layers.0.mlp.up_proj: the base layer is a Linear4bit "
                                      "(quantized or not a plain torch Linear): the fused kernel reads its weight "
                                      "directly")


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("quant") / "nf4"
    assert main(run_args(fixtures_dir, out, "--rounds", "2", "--quantize", "nf4")) == 0
    return out


def test_nf4_run_evaluates_as_it_logged(nf4_run, capsys):
    rounds = [json.loads(x) for x in (nf4_run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rounds if r["type"] == "round"][-1]["eval"]["overall"]["loss"]
    capsys.readouterr()
    assert main(["eval", "--run", str(nf4_run)]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["loss"] == pytest.approx(logged, rel=1e-6)


def test_nf4_resume_is_bit_identical(nf4_run, fixtures_dir, tmp_path, monkeypatch):
    alone = simulation.InProcessClients.train_client   # the peft engine trains clients one at a time

    def crash_in_round_2(self, job):
        if job.round == 2:
            raise KeyboardInterrupt
        return alone(self, job)

    out = tmp_path / "crashed"
    monkeypatch.setattr(simulation.InProcessClients, "train_client", crash_in_round_2)
    assert main(run_args(fixtures_dir, out, "--rounds", "2", "--quantize", "nf4")) == 130
    monkeypatch.setattr(simulation.InProcessClients, "train_client", alone)
    assert main(["run", "--out", str(out), "--resume"]) == 0
    a, b = (load_file(str(d / "final" / "adapter_model.safetensors")) for d in (nf4_run, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nf4_export_merges_into_the_dequantized_base(nf4_run, tmp_path):
    assert main(["export", "--run", str(nf4_run), "--out", str(tmp_path / "merged")]) == 0
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    adapter = load_file(str(nf4_run / "final" / "adapter_model.safetensors"))
    base_path = json.loads((nf4_run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = quantize.load_quantized(base_path, "nf4", torch.device("cpu"), torch.float32)
    q = base.model.layers[1].self_attn.v_proj
    dequantized = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
    prefix = "base_model.model.model.layers.1.self_attn.v_proj"
    delta = adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"] * (16 / 8)
    torch.testing.assert_close(merged["model.layers.1.self_attn.v_proj.weight"], dequantized + delta,
                               rtol=0, atol=1e-6)
