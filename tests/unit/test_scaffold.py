"""SCAFFOLD (Karimireddy et al., 2020): the client's correction and control-variate update and the
server's updates of x and c, by hand on 1x1 tensors; the SGD identity behind fedit's option II;
the state round trips; a malformed reply is dropped; on tiny-random, a first SCAFFOLD round (c = c_i
= 0) trains exactly like FedAvg."""

import io

import pytest
import torch

from fedit.client.job import ClientJob, ClientUpdate, run_job
from fedit.client.scaffold import CLIENT_C, DELTA_C, GRAD_SUM, SERVER_C, scaffold_correction, scaffold_variates
from fedit.config import TrainConfig
from fedit.errors import ConfigError, UpdateError
from fedit.server import make_strategy

A, B = "m.lora_A.weight", "m.lora_B.weight"


def t(x):
    return torch.tensor([[float(x)]])


def pair(a, b):
    return {A: t(a), B: t(b)}


def params_with_grads(ga, gb, values=(0.0, 0.0)):
    ps = {A: torch.nn.Parameter(t(values[0])), B: torch.nn.Parameter(t(values[1]))}
    ps[A].grad, ps[B].grad = t(ga), t(gb)
    return ps


def job(c, client_id=0):
    return ClientJob(client_id, 1, pair(0, 0), {"scaffold": True}, {SERVER_C: c})


# -- client ---------------------------------------------------------------------------------------

def test_client_correction_and_variate_by_hand():
    # c = (1, -2), c_i = (0.5, 0): every step's gradient g becomes g + (c - c_i) = g + (0.5, -2)
    state = {CLIENT_C: pair(0.5, 0)}
    correct = scaffold_correction(job(pair(1, -2)), torch.device("cpu"), state)
    p = params_with_grads(0.25, 1.0)
    correct(p)
    assert (p[A].grad.item(), p[B].grad.item()) == (0.75, -1.0)        # 0.25 + 0.5 ; 1 - 2
    p = params_with_grads(0.75, 3.0)
    correct(p)
    assert (p[A].grad.item(), p[B].grad.item()) == (1.25, 1.0)         # 0.75 + 0.5 ; 3 - 2
    # after K = 2 steps: c_i+ = mean of the uncorrected gradients = ((0.25+0.75)/2, (1+3)/2) = (0.5, 2)
    # delta_c_i = c_i+ - c_i = (0.5 - 0.5, 2 - 0) = (0, 2)
    update = scaffold_variates(ClientUpdate(0, pair(9, 9), 4, {"steps": 2}), job(pair(1, -2)), state)
    assert (update.arrays[DELTA_C][A].item(), update.arrays[DELTA_C][B].item()) == (0.0, 2.0)
    assert (state[CLIENT_C][A].item(), state[CLIENT_C][B].item()) == (0.5, 2.0)
    assert GRAD_SUM not in state                      # only c_i is kept between rounds
    assert torch.equal(update.state[A], t(9))         # the adapter itself is untouched


def test_first_round_client_variate_starts_at_zero():
    # no c_i yet: the correction is c itself; delta_c_i = c_i+ - 0
    state = {}
    correct = scaffold_correction(job(pair(2, 0)), torch.device("cpu"), state)
    p = params_with_grads(1.0, -4.0)
    correct(p)
    assert (p[A].grad.item(), p[B].grad.item()) == (3.0, -4.0)
    update = scaffold_variates(ClientUpdate(0, pair(0, 0), 1, {"steps": 1}), job(pair(2, 0)), state)
    assert (update.arrays[DELTA_C][A].item(), update.arrays[DELTA_C][B].item()) == (1.0, -4.0)


def test_jobs_without_scaffold_are_untouched():
    plain = ClientJob(0, 1, pair(0, 0), {})
    state = {}
    assert scaffold_correction(plain, torch.device("cpu"), state) is None and state == {}
    update = ClientUpdate(0, pair(1, 1), 1, {"steps": 1})
    assert scaffold_variates(update, plain, state) is update


def test_a_job_without_its_control_variate_is_refused():
    with pytest.raises(ConfigError, match="client config scaffold: the job carries no 'scaffold_c' array"):
        scaffold_correction(ClientJob(0, 1, pair(0, 0), {"scaffold": True}), torch.device("cpu"), {})
    with pytest.raises(ConfigError, match="job array scaffold_c: adapter update is missing 1 key"):
        scaffold_correction(job({A: t(0)}), torch.device("cpu"), {})


def test_gradient_mean_is_option_two_under_sgd():
    # Option II: c_i+ = c_i - c + (x - y_i)/(K lr). With SGD at a constant lr,
    # y_i = x - lr * sum_k (g_k + c - c_i), so option II = mean_k g_k: what fedit computes.
    # K = 3 SGD steps on f(w) = 0.5 * (w - target)^2 per coordinate.
    x, c, c_i, lr, K = pair(1.0, -2.0), pair(0.3, -0.1), pair(-0.2, 0.4), 0.1, 3
    target = pair(5.0, 3.0)
    state = {CLIENT_C: c_i}
    correct = scaffold_correction(job(c), torch.device("cpu"), state)
    w = {k: torch.nn.Parameter(v.clone()) for k, v in x.items()}
    for _ in range(K):
        for k, p in w.items():
            p.grad = (p.detach() - target[k]).clone()
        correct(w)
        with torch.no_grad():
            for p in w.values():
                p.sub_(lr * p.grad)
    y = {k: p.detach().clone() for k, p in w.items()}
    scaffold_variates(ClientUpdate(0, y, 1, {"steps": K}), job(c), state)
    for k in x:
        option_two = c_i[k] - c[k] + (x[k] - y[k]) / (K * lr)
        assert torch.allclose(state[CLIENT_C][k], option_two, atol=1e-6), k


# -- server ---------------------------------------------------------------------------------------

def scaffold(num_clients=4, server_lr=0.5):
    return make_strategy("scaffold", server_lr=server_lr, num_clients=num_clients, clients_per_round=2, seed=0)


def reply(cid, a, n, dc):
    return ClientUpdate(cid, pair(a, 0), n, {"train_loss": 1.0}, {DELTA_C: pair(dc, 0)})


def test_server_updates_x_and_c_by_hand():
    strat = scaffold()
    x0 = pair(1, 0)
    jobs = strat.configure_train(1, x0)
    assert [j.config for j in jobs] == [{"scaffold": True}] * 2
    assert all(torch.equal(j.arrays[SERVER_C][A], t(0)) for j in jobs)        # c starts at zero
    # x: example-weighted mean of the y_i (2 with 1 example, 6 with 3) = 5 ; x = 1 + 0.5 * (5 - 1) = 3
    # c: N = 4 clients, uniform: c = 0 + (1 + 3)/4 = 1   (= |S|/N * mean = 2/4 * 2)
    x1, metrics = strat.aggregate_train(1, x0, [reply(0, 2, 1, 1.0), reply(1, 6, 3, 3.0)])
    assert x1[A].item() == 3.0 and strat.control[A].item() == 1.0
    assert metrics["num_examples"] == 4 and metrics["scaffold_c_norm"] == pytest.approx(1.0)
    # round 2 sends c = 1; one valid reply with delta_c = -2: c = 1 + (-2)/4 = 0.5
    # x: its y = 3 -> x = 3 + 0.5 * 0 = 3
    assert all(torch.equal(j.arrays[SERVER_C][A], t(1)) for j in strat.configure_train(2, x1))
    saved = io.BytesIO()
    torch.save(strat.state_dict(), saved)
    saved.seek(0)
    x2, _ = strat.aggregate_train(2, x1, [reply(2, 3, 7, -2.0)])
    assert x2[A].item() == 3.0 and strat.control[A].item() == 0.5
    restored = scaffold()
    restored.load_state_dict(torch.load(saved, weights_only=True))
    assert restored.control[A].item() == 1.0 and restored.sampler.state_dict() == scaffold_after_round_2_sampler()


def scaffold_after_round_2_sampler():
    strat = scaffold()
    strat.configure_train(1, pair(0, 0))
    strat.configure_train(2, pair(0, 0))
    return strat.sampler.state_dict()


def test_server_lr_one_is_the_plain_average():
    strat = scaffold(server_lr=1.0)
    strat.configure_train(1, pair(0, 0))
    x1, _ = strat.aggregate_train(1, pair(0, 0), [reply(0, 2, 1, 0.0), reply(1, 6, 3, 0.0)])
    assert x1[A].item() == 5.0


@pytest.mark.parametrize("arrays, message", [
    ({}, "client 3: the reply has no 'scaffold_dc' array (a client that does not run SCAFFOLD?)"),
    ({DELTA_C: {A: t(float("nan")), B: t(0)}}, "client 3: scaffold_dc: adapter update m.lora_A.weight: "
                                                "contains NaN or infinite values (as float32)"),
    ({DELTA_C: {A: t(0)}}, "client 3: scaffold_dc: adapter update is missing 1 key(s), first: m.lora_B.weight"),
])
def test_a_reply_without_a_usable_variate_delta_is_refused(arrays, message):
    strat = scaffold()
    [sent, _] = strat.configure_train(1, pair(0, 0))
    with pytest.raises(UpdateError) as err:
        strat.receive(sent, ClientUpdate(3, pair(1, 1), 1, {}, arrays))
    assert str(err.value) == message


def test_the_round_loop_drops_a_refused_reply(tmp_path):
    from fedit.config import Config
    from fedit.runners.federation import Federation
    from fedit.runners.rundir import RunDir
    from fedit.server import build_strategy

    class Clients:
        def train(self, jobs):   # the first job's reply lacks its variate delta
            self.sent = [j.client_id for j in jobs]
            return [ClientUpdate(j.client_id, {A: t(2)}, 1, {"train_loss": 1.0},
                                 {} if j.client_id == jobs[0].client_id else {DELTA_C: {A: t(4)}}) for j in jobs]

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = Config().override({"model": "tiny-random", "strategy": "scaffold", "num_clients": 3,
                             "clients_per_round": 2, "rounds": 1})
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 3), Clients(), run_dir)
    fed.start({A: t(0)}, run_dir.prepare(cfg, resume=False))
    record = fed.run_round(1)
    first, second = fed.transport.sent
    assert record["clients"] == [second] and record["dropped"] == [
        f"client {first}: the reply has no 'scaffold_dc' array (a client that does not run SCAFFOLD?)"]
    assert fed.state[A].item() == 2.0 and fed.strategy.control[A].item() == pytest.approx(4 / 3)   # c = 4/N


# -- on tiny-random -------------------------------------------------------------------------------

CFG = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=3)


@pytest.fixture(scope="module")
def data(tiny_bench, fixtures_dir):
    from fedit.config import DataConfig
    from fedit.data import load_examples

    examples, _ = load_examples(fixtures_dir / "tiny" / "client_0.json")
    return tiny_bench.tokenize(examples, DataConfig(max_len=128))


def test_a_first_round_with_zero_variates_trains_like_fedavg(tiny_bench, data):
    x = tiny_bench.initial_state
    zeros = {k: torch.zeros_like(v) for k, v in x.items()}
    plain, _ = run_job(tiny_bench.trainer, ClientJob(0, 1, x, {}), data, CFG, seed=1)
    first, state = run_job(tiny_bench.trainer, ClientJob(0, 1, x, {"scaffold": True}, {SERVER_C: zeros}),
                           data, CFG, seed=1)
    assert all(torch.equal(plain.state[k], first.state[k]) for k in x)
    assert set(state) == {CLIENT_C} and set(state[CLIENT_C]) == set(x)
    assert all(torch.equal(first.arrays[DELTA_C][k], state[CLIENT_C][k]) for k in x)    # c_i was 0
    lora_b = [k for k in x if ".lora_B." in k]
    assert any(state[CLIENT_C][k].abs().sum() > 0 for k in lora_b)
    # a second round with c != c_i moves the adapter differently than FedAvg would
    c = {k: v + 1e-3 for k, v in zeros.items()}
    second, state2 = run_job(tiny_bench.trainer, ClientJob(0, 2, x, {"scaffold": True}, {SERVER_C: c}),
                             data, CFG, seed=1, client_state=state)
    plain2, _ = run_job(tiny_bench.trainer, ClientJob(0, 2, x, {}), data, CFG, seed=1)
    assert any(not torch.equal(second.state[k], plain2.state[k]) for k in x)
    assert all(torch.equal(second.arrays[DELTA_C][k], state2[CLIENT_C][k] - state[CLIENT_C][k]) for k in x)
