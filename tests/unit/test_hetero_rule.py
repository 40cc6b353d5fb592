"""--hetero-rule: over rounds where no client changes anything, the per-component rule keeps the global
adapter exactly; the paper's rule (the default) shrinks what the low-rank clients do not hold."""

import pytest
import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.server import build_strategy

Q = "base_model.model.model.layers.0.self_attn.q_proj"
A, B = f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"


def no_op_drift(aggregation, rule, rounds=5):
    """||B A after `rounds` no-op rounds - B A before|| / ||B A before||, clients of ranks 8, 4, 2."""
    cfg = Config().override({"lora_aggregation": aggregation, "hetero_rule": rule, "client_ranks": "8,4,2",
                             "num_clients": 3, "clients_per_round": 3})
    gen = torch.Generator().manual_seed(0)
    state = {A: torch.randn(8, 16, generator=gen), B: torch.randn(12, 8, generator=gen)}
    before = state[B] @ state[A]
    strategy = build_strategy(cfg, 3)
    for round_idx in range(1, rounds + 1):
        jobs = strategy.configure_train(round_idx, state)
        replies = [ClientUpdate(j.client_id, dict(j.state), 10, {"train_loss": 1.0}) for j in jobs]
        state, _ = strategy.aggregate_train(round_idx, state, replies)
    return float((state[B] @ state[A] - before).norm() / before.norm())


@pytest.mark.parametrize("aggregation", ["zero-pad", "ffa", "product-svd"])
def test_per_component_rule_does_not_decay_over_no_op_rounds(aggregation):
    assert no_op_drift(aggregation, "per-component") < 1e-5
    assert no_op_drift(aggregation, "paper") > 0.3     # the default's decay (docs/methods.md states it)


def test_per_component_rule_averages_a_components_change_over_its_holders():
    from fedit.server.lora_aggregate import mean_factors

    glob = {A: torch.zeros(2, 1), B: torch.zeros(1, 2)}
    full = {A: torch.tensor([[1.0], [4.0]]), B: torch.tensor([[1.0, 4.0]])}
    low = {A: torch.tensor([[3.0]]), B: torch.tensor([[3.0]])}
    out = mean_factors(glob, [full, low], [1, 1], per_component=True)
    assert out[A].tolist() == [[2.0], [4.0]] and out[B].tolist() == [[2.0, 4.0]]   # component 1: only `full`
    paper = mean_factors(glob, [full, low], [1, 1])
    assert paper[A].tolist() == [[2.0], [2.0]]                                    # halved by the zero
