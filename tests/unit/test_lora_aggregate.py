"""LoRA-aware aggregation (factors, ffa, zero-pad, product-svd) and heterogeneous client layouts,
on tiny tensors with hand-computed expectations."""

import math

import pytest
import torch

from fedit.client import ClientUpdate
from fedit.server import make_strategy, weighted_mean
from fedit.server.lora_aggregate import (aggregate_lora, client_view, lora_gap, mean_factors, mean_products,
                                         module_selected, product_svd)

A, B = "m.lora_A.weight", "m.lora_B.weight"
NA, NB = "n.lora_A.weight", "n.lora_B.weight"


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def lora(a, b, prefix="m"):
    return {f"{prefix}.lora_A.weight": t(a), f"{prefix}.lora_B.weight": t(b)}


def product(state, prefix="m"):
    return state[f"{prefix}.lora_B.weight"] @ state[f"{prefix}.lora_A.weight"]


# -- zero-pad (HetLoRA) and factors ----------------------------------------------------------------
GLOBAL2 = lora([[9, 9], [9, 9]], [[9, 9], [9, 9]])          # rank 2, d_in = d_out = 2
RANK2 = lora([[1, 0], [0, 1]], [[2, 0], [0, 2]])
RANK1 = lora([[3, 3]], [[1], [1]])


def test_zero_pad_two_clients_hand_computed():
    new, metrics = aggregate_lora("zero-pad", GLOBAL2, [RANK2, RANK1], [1, 1])
    # A: 0.5*[[1,0],[0,1]] + 0.5*[[3,3],[0,0]] ; B: 0.5*[[2,0],[0,2]] + 0.5*[[1,0],[1,0]]
    assert torch.equal(new[A], t([[2, 1.5], [0, 0.5]]))
    assert torch.equal(new[B], t([[1.5, 0], [0.5, 1]]))
    # each client gets its first r_k components back
    view = client_view(new, 1, "all-linear")
    assert torch.equal(view[A], t([[2, 1.5]])) and torch.equal(view[B], t([[1.5], [0.5]]))
    # gap on the padded factors: exact mean(BA) = [[2.5,1.5],[1.5,2.5]], mean(B)mean(A) = [[3,2.25],[1,1.25]]
    assert metrics["lora_gap_mean"] == pytest.approx(math.sqrt(2.625 / 17))


def test_zero_pad_with_equal_ranks_equals_factors():
    g = torch.Generator().manual_seed(0)
    states = [{A: torch.randn(3, 5, generator=g), B: torch.randn(4, 3, generator=g)} for _ in range(3)]
    glob = {A: torch.zeros(3, 5), B: torch.zeros(4, 3)}
    padded, m1 = aggregate_lora("zero-pad", glob, states, [1, 2, 5])
    plain, m2 = aggregate_lora("factors", glob, states, [1, 2, 5])
    fedavg = weighted_mean(states, [1, 2, 5])
    assert all(torch.equal(padded[k], fedavg[k]) and torch.equal(plain[k], fedavg[k]) for k in glob)
    assert m1 == m2
    # the general (padding) path gives the same numbers as FedAvg where every client holds the factor
    partial = [{**s, NA: torch.ones(1, 2), NB: torch.ones(2, 1)} if i == 0 else s for i, s in enumerate(states)]
    general = mean_factors({**glob, NA: torch.zeros(1, 2), NB: torch.zeros(2, 1)}, partial, [1, 2, 5])
    assert torch.equal(general[A], fedavg[A]) and torch.equal(general[B], fedavg[B])


def test_modules_are_averaged_over_the_clients_that_trained_them():
    glob = {**lora([[0]], [[0]]), **lora([[7]], [[7]], "n"), "o.lora_A.weight": t([[5]]), "o.lora_B.weight": t([[6]])}
    c0 = {**lora([[1]], [[2]]), **lora([[4]], [[8]], "n")}
    c1 = lora([[3]], [[4]])                                   # did not train n (nor o)
    new, _ = aggregate_lora("zero-pad", glob, [c0, c1], [1, 3])
    assert new[A].item() == pytest.approx(2.5) and new[B].item() == pytest.approx(3.5)  # (1+9)/4, (2+12)/4
    assert new[NA].item() == 4 and new[NB].item() == 8       # client 0's alone (weight renormalised to 1)
    assert new["o.lora_A.weight"].item() == 5 and new["o.lora_B.weight"].item() == 6  # nobody: unchanged


# -- ffa (FFA-LoRA) --------------------------------------------------------------------------------
def test_ffa_averages_b_keeps_a_and_is_exact():
    glob = lora([[1, 2]], [[0], [0]])
    b0, b1 = {B: t([[1], [0]])}, {B: t([[3], [2]])}            # clients send only B
    new, metrics = aggregate_lora("ffa", glob, [b0, b1], [1, 3])
    assert torch.equal(new[A], glob[A])                          # A never changes
    assert torch.allclose(new[B], t([[2.5], [1.5]]))             # 0.25*1 + 0.75*3, 0.75*2
    exact = 0.25 * (b0[B] @ glob[A]) + 0.75 * (b1[B] @ glob[A])
    assert torch.allclose(product(new), exact) and metrics["lora_gap_mean"] == pytest.approx(0.0, abs=1e-7)


def test_ffa_with_mixed_ranks_is_exact():
    g = torch.Generator().manual_seed(1)
    glob = {A: torch.randn(4, 6, generator=g), B: torch.zeros(5, 4)}
    ranks, weights = [4, 2, 1], [2.0, 1.0, 1.0]
    states = [{B: torch.randn(5, r, generator=g)} for r in ranks]
    new, _ = aggregate_lora("ffa", glob, states, weights)
    exact = sum(w / 4 * (s[B] @ glob[A][:r]) for s, r, w in zip(states, ranks, weights))
    assert torch.allclose(product(new), exact, atol=1e-6)


# -- product-svd (FlexLoRA) ------------------------------------------------------------------------
C0 = lora([[1, 0]], [[2], [0]])       # B A = [[2,0],[0,0]]
C1 = lora([[0, 1]], [[0], [1]])       # B A = [[0,0],[0,1]]  -> equal weights: mean = diag(1, 0.5)


def test_product_svd_two_clients_hand_computed():
    new, metrics = aggregate_lora("product-svd", lora([[5, 5]], [[0], [0]]), [C0, C1], [1, 1])
    assert torch.allclose(product(new), t([[1, 0], [0, 0]]), atol=1e-6)   # best rank 1 of diag(1, 0.5)
    assert metrics["svd_energy_dropped_mean"] == pytest.approx(0.25 / 1.25)  # 0.5^2 / (1^2 + 0.5^2)
    assert metrics["svd_energy_dropped_max"] == pytest.approx(0.2)
    assert torch.allclose(new[A].norm(dim=1), torch.ones(1))               # A = V^T: orthonormal rows
    # global rank 2 >= 1 + 1: exact, nothing dropped
    new2, metrics2 = aggregate_lora("product-svd", GLOBAL2, [C0, C1], [1, 1])
    assert torch.allclose(product(new2), t([[1, 0], [0, 0.5]]), atol=1e-6)
    assert metrics2["svd_energy_dropped_max"] == pytest.approx(0.0, abs=1e-12)
    # a rank-1 client receives the best rank-1 truncation
    assert torch.allclose(product(client_view(new2, 1, "all-linear")), t([[1, 0], [0, 0]]), atol=1e-6)


@pytest.mark.parametrize("ranks, global_rank", [([1, 2, 3], 6), ([2, 2], 7), ([1, 2, 3], 4), ([2, 2], 2)])
def test_product_svd_is_the_best_truncation_and_exact_when_rank_suffices(ranks, global_rank):
    g = torch.Generator().manual_seed(sum(ranks) + global_rank)
    states = [{A: torch.randn(r, 5, generator=g), B: torch.randn(7, r, generator=g)} for r in ranks]
    weights = [float(i + 1) for i in range(len(ranks))]
    glob = {A: torch.randn(global_rank, 5, generator=g), B: torch.zeros(7, global_rank)}
    new, metrics = aggregate_lora("product-svd", glob, states, weights)
    mean = sum(w / sum(weights) * (s[B] @ s[A]) for s, w in zip(states, weights))
    u, s, vh = torch.linalg.svd(mean.double())
    k = min(global_rank, s.numel())
    best = (u[:, :k] * s[:k]) @ vh[:k]
    assert torch.allclose(product(new).double(), best, atol=1e-5)
    dropped = float((s[k:] ** 2).sum() / (s ** 2).sum())
    assert metrics["svd_energy_dropped_max"] == pytest.approx(dropped, rel=1e-5, abs=1e-9)
    if global_rank >= sum(ranks):
        assert torch.allclose(product(new), mean, atol=1e-5)
    assert new[A].shape == (global_rank, 5) and new[B].shape == (7, global_rank)


def test_product_svd_keeps_unfilled_components_trainable():
    # one rank-1 client, global rank 3: components 2 and 3 get a zero B and keep the global A rows
    fallback = t([[1, 1], [2, 2], [3, 3]])
    a, b, dropped = product_svd([(t([[1, 0]]), t([[0], [4]]))], [1.0], 3, fallback)
    assert torch.equal(a[1:], fallback[1:]) and torch.equal(b[:, 1:], torch.zeros(2, 2))
    assert torch.allclose(b @ a, t([[0, 0], [4, 0]])) and dropped == 0.0


def test_product_svd_averages_modules_over_their_holders():
    glob = {**lora([[1, 0]], [[0], [0]]), **lora([[1, 0]], [[0], [0]], "n")}
    new, _ = mean_products(glob, [{**C0, **lora([[0, 1]], [[0], [3]], "n")}, C1], [1, 1])
    assert torch.allclose(product(new, "n"), t([[0, 0], [0, 3]]), atol=1e-6)  # client 0's alone


def test_lora_gap_completes_hetero_and_b_only_updates():
    assert lora_gap(GLOBAL2, [RANK2, RANK1], [1, 1])["lora_gap_max"] == pytest.approx(math.sqrt(2.625 / 17))
    glob = lora([[1, 2]], [[0], [0]])
    assert lora_gap(glob, [{B: t([[1], [0]])}, {B: t([[3], [2]])}], [1, 1])["lora_gap_max"] == pytest.approx(0.0)


# -- what a client receives ------------------------------------------------------------------------
Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.0.self_attn.v_proj"


def model_state(rank=4):
    return {f"{m}.lora_{f}.weight": torch.arange(rank * 3, dtype=torch.float32).reshape(
        (rank, 3) if f == "A" else (3, rank)) for m in (Q, V) for f in "AB"}


def test_client_view_truncates_selects_and_drops_a_under_ffa():
    glob = model_state()
    view = client_view(glob, 2, "q_proj")
    assert sorted(view) == [f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"]
    assert torch.equal(view[f"{Q}.lora_A.weight"], glob[f"{Q}.lora_A.weight"][:2])
    assert torch.equal(view[f"{Q}.lora_B.weight"], glob[f"{Q}.lora_B.weight"][:, :2])
    assert sorted(client_view(glob, None, "all-linear", b_only=True)) == [f"{Q}.lora_B.weight", f"{V}.lora_B.weight"]
    assert client_view(glob, None, "all-linear") == glob
    assert module_selected(Q, "layers.0.self_attn.q_proj") and not module_selected(Q, "proj")


def _client(job, delta=1.0):
    return ClientUpdate(job.client_id, {k: v + delta * (job.client_id + 1) for k, v in job.state.items()}, 10,
                        {"train_loss": 1.0})


def test_strategy_sends_each_client_its_layout_and_aggregates_them():
    from fedit.client_lora import ClientLora

    strat = make_strategy("fedavg", num_clients=2, clients_per_round=2, seed=0, lora_aggregation="zero-pad",
                          client_lora={1: ClientLora(2, "q_proj")})
    glob = model_state()
    jobs = sorted(strat.configure_train(1, glob), key=lambda j: j.client_id)
    assert jobs[0].state is glob and jobs[0].config == {}
    assert jobs[1].config == {"lora_rank": 2, "lora_targets": "q_proj"}
    assert {k: tuple(v.shape) for k, v in jobs[1].state.items()} == {f"{Q}.lora_A.weight": (2, 3),
                                                                      f"{Q}.lora_B.weight": (3, 2)}
    new, _ = strat.aggregate_train(1, glob, [_client(j) for j in jobs])
    qa = glob[f"{Q}.lora_A.weight"]
    # q_proj A: rows 0-1 averaged (+1 and +2 -> +1.5), rows 2-3 only client 0 held them (+1) and client 1 padded 0
    assert torch.equal(new[f"{Q}.lora_A.weight"][:2], qa[:2] + 1.5)
    assert torch.equal(new[f"{Q}.lora_A.weight"][2:], 0.5 * (qa[2:] + 1))
    assert torch.equal(new[f"{V}.lora_A.weight"], glob[f"{V}.lora_A.weight"] + 1)   # only client 0 trained v_proj


def test_ffa_strategy_sends_only_b_and_fedavgm_composes():
    strat = make_strategy("fedavgm", server_lr=1.0, server_momentum=0.5, num_clients=1, clients_per_round=1, seed=0,
                          lora_aggregation="ffa")
    glob = model_state()
    [job] = strat.configure_train(1, glob)
    assert all(".lora_B." in k for k in job.state) and len(job.state) == 2
    w1, _ = strat.aggregate_train(1, glob, [_client(job)])
    w2, _ = strat.aggregate_train(2, w1, [_client(strat.configure_train(2, w1)[0])])
    key = f"{Q}.lora_B.weight"
    assert torch.equal(w2[key], glob[key] + 1 + 1.5)            # v = 1, then 0.5*1 + 1
    assert all(torch.equal(w2[k], glob[k]) for k in glob if ".lora_A." in k)
