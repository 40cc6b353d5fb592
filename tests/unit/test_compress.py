"""Update codecs: hand-made examples, round-trip error bounds, top-k error feedback, the server's
decoding of malformed replies, and the wrapper's contract with the clients."""

import pytest
import torch

from fedit.client.job import ClientJob, ClientUpdate, check_client_config
from fedit.comm.codecs import decode, encode
from fedit.comm.topk import topk_count
from fedit.client.compress import RESIDUAL, compress_update
from fedit.comm.codecs import AUX
from fedit.server.compression import Compression, decode_update
from fedit.config import Config
from fedit.errors import ConfigError, UpdateError
from fedit.server import FedAvg, build_strategy

A, B = "m.lora_A.weight", "m.lora_B.weight"


def test_int8_hand_example():
    x = torch.tensor([1.0, -0.5, 0.25, 127.0])
    q, scale = encode("int8", x, block=2)
    assert q.tolist() == [127, -64, 0, 127] and scale.tolist() == pytest.approx([1 / 127, 1.0])
    assert decode("int8", q, scale, x.shape, block=2).tolist() == pytest.approx([1.0, -64 / 127, 0.0, 127.0])


def test_topk_hand_example_and_count():
    values, idx = encode("topk", torch.tensor([0.1, -3.0, 2.0, 0.5]), share=0.5)
    assert idx.tolist() == [1, 2] and values.tolist() == [-3.0, 2.0] and idx.dtype == torch.int32
    assert decode("topk", values, idx, torch.Size([2, 2])).tolist() == [[0, -3], [2, 0]]
    assert [topk_count(n, s) for n, s in ((4, 0.5), (10, 0.01), (10, 0.25), (3, 1.0))] == [2, 1, 3, 3]


@pytest.mark.parametrize("codec, rel, absolute", [("fp16", 2**-11, 2**-24), ("bf16", 2**-8, 0.0)])
def test_float_codecs_round_trip_within_half_an_ulp(codec, rel, absolute):
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(0)) * 1e-3
    main, aux = encode(codec, x)
    back = decode(codec, main, aux, x.shape)
    assert aux is None and main.element_size() == 2
    assert ((back - x).abs() <= rel * x.abs() + absolute).all()
    assert not torch.equal(back, x)


def test_int8_round_trip_error_is_at_most_half_a_step_per_block():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * torch.logspace(-6, 1, 1000)
    q, scale = encode("int8", x, block=64)
    back = decode("int8", q, scale, x.shape, block=64)
    step = scale.repeat_interleave(64)[:1000]                     # each entry's block scale
    assert scale.shape == (16,) and q.dtype == torch.int8
    assert ((back - x).abs() <= step / 2 * (1 + 1e-5)).all()
    assert (scale == torch.stack([b.abs().max() for b in x.split(64)]) / 127).all()


def job_and_update(delta, sent=None, client=3, spec="topk:0.5"):
    sent = sent if sent is not None else {A: torch.ones(2, 2), B: torch.zeros(1, 2)}
    job = ClientJob(client, 1, sent, {"compress": spec, "compress_block_size": 2})
    update = ClientUpdate(client, {k: sent[k] + delta[k] for k in sent}, 5, {"train_loss": 1.0})
    return job, update


def test_topk_error_feedback_conserves_the_dropped_mass():
    client_state, sent_total = {}, {A: torch.zeros(2, 2), B: torch.zeros(1, 2)}
    deltas = [{A: torch.tensor([[0.1, -3.0], [2.0, 0.5]]), B: torch.tensor([[1.0, 0.25]])},
              {A: torch.tensor([[1.0, 0.0], [0.0, 0.0]]), B: torch.tensor([[0.0, 0.5]])},
              {A: torch.tensor([[-0.2, 0.3], [0.1, 0.05]]), B: torch.tensor([[0.7, -0.7]])}]
    for delta in deltas:
        job, update = job_and_update(delta)
        coded = compress_update(update, job, client_state)
        got = decode_update(job, coded, "topk", 2)
        for k in sent_total:
            sent_total[k] += got.state[k] - job.state[k]
    for k in sent_total:   # everything sent + what is still owed == everything computed
        owed = client_state[RESIDUAL][k]
        assert torch.allclose(sent_total[k] + owed, sum(d[k] for d in deltas), atol=1e-6)
    # round 1 by hand: A keeps -3 and 2, owes 0.1 and 0.5; B keeps 1, owes 0.25
    job, update = job_and_update(deltas[0])
    state = {}
    compress_update(update, job, state)
    assert torch.allclose(state[RESIDUAL][A], torch.tensor([[0.1, 0.0], [0.0, 0.5]]), rtol=0, atol=1e-7)
    assert state[RESIDUAL][B].tolist() == [[0.0, 0.25]]


@pytest.mark.parametrize("spec, codec", [("fp16", "fp16"), ("bf16", "bf16"), ("int8", "int8"), ("topk:1", "topk")])
def test_transform_then_server_decode_gives_back_the_adapter(spec, codec):
    delta = {A: torch.tensor([[0.5, -0.5], [0.0, 1.0]]), B: torch.tensor([[4.0, -4.0]])}  # int8: +-absmax, 0
    job, update = job_and_update(delta, spec=spec)
    coded = compress_update(update, job, {})
    assert set(coded.state) == {A, B} and (AUX in coded.arrays) == (codec in ("int8", "topk"))
    back = decode_update(job, coded, codec, 2)
    assert back.arrays == {} and back.num_examples == 5 and back.metrics == update.metrics
    for k in update.state:  # exact but for int8's float32 scale (absmax / 127) * 127
        assert torch.allclose(back.state[k], update.state[k], rtol=0, atol=0 if codec != "int8" else 1e-6), (spec, k)


@pytest.mark.parametrize("spec, mangle, message", [
    ("int8", lambda u: u.state.update({A: u.state[A].float()}), "m.lora_A.weight is not int8: expected int8 of "
                                                                  "shape (2, 2), got float32 of shape (2, 2)"),
    ("int8", lambda u: u.arrays.pop(AUX), "is not int8: expected 2 float32 block scales"),
    ("topk:0.5", lambda u: u.arrays[AUX][A].fill_(7), "is not topk: an index is outside 0..3"),
    ("fp16", lambda u: u.state.pop(B), "compressed update is missing m.lora_B.weight"),
])
def test_a_malformed_coded_reply_is_an_update_error(spec, mangle, message):
    job, update = job_and_update({A: torch.ones(2, 2), B: torch.ones(1, 2)}, spec=spec)
    coded = compress_update(update, job, {})
    mangle(coded)
    codec = spec.split(":")[0]
    with pytest.raises(UpdateError, match="^client 3: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        decode_update(job, coded, codec, 2)


def test_wrapper_asks_every_client_and_is_built_from_the_config():
    cfg = Config().override({"compress": "topk:0.1", "num_clients": 4, "clients_per_round": 2})
    strategy = build_strategy(cfg, 4)
    assert isinstance(strategy, Compression) and strategy.describe() == "fedavg with topk:0.1 updates"
    jobs = strategy.configure_train(1, {A: torch.zeros(1)})
    assert [j.config for j in jobs] == [{"compress": "topk:0.1", "compress_block_size": 64}] * 2
    check_client_config(jobs[0].config)
    assert not isinstance(build_strategy(Config(), 10), Compression)
    wrapped = Compression(FedAvg(num_clients=2, clients_per_round=2, seed=0), compress="fp16", compress_block_size=8)
    job, update = job_and_update({A: torch.ones(2, 2), B: torch.ones(1, 2)}, spec="fp16")
    assert torch.equal(wrapped.receive(job, compress_update(update, job, {})).state[A], torch.full((2, 2), 2.0))


@pytest.mark.parametrize("spec", ["topk", "topk:0", "topk:1.5", "topk:x", "int4", "fp16:2"])
def test_bad_compress_spec_names_the_flag(spec):
    with pytest.raises(ConfigError, match="^--compress: "):
        Config().override({"compress": spec})
