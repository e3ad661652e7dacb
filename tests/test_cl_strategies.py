"""CL methods: replay's buffer is balanced, deterministic and mixed into training; EWC's penalty gradient
equals autograd of λ/2 Σ F (θ − θ*)²; options are validated."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.utils import AvalancheDataset

from clsharelora import registry
from clsharelora.benchmarks.tokenized import PadCollator, TokenizedPairs
from clsharelora.errors import ConfigError
from clsharelora.training.cl_base import CLContext


def _dataset(tag: int, n: int):
    examples = [{"input_ids": [tag, i], "labels": [tag, i]} for i in range(n)]
    return AvalancheDataset([TokenizedPairs(examples, [f"{tag}/{i}" for i in range(n)])], collate_fn=PadCollator(0))


def test_replay_buffer_is_balanced_deterministic_and_bounded():
    datasets = [_dataset(t, 50) for t in range(3)]
    make = lambda: registry.create("replay", "cl", mem_size=30).plugins(CLContext(seed=1, datasets=datasets))[0]
    plugin = make()
    assert plugin.buffer() is None
    plugin.seen = 2
    items = [plugin.buffer()[i]["input_ids"] for i in range(len(plugin.buffer()))]
    assert len(items) == 30 and sum(x[0] == 0 for x in items) == 15 and sum(x[0] == 1 for x in items) == 15
    other = make()
    other.load_state_dict(plugin.state_dict())
    assert [other.buffer()[i]["input_ids"] for i in range(30)] == items
    plugin.seen = 3
    assert len(plugin.buffer()) == 30


def test_replay_extends_the_training_data():
    datasets = [_dataset(t, 10) for t in range(2)]
    plugin = registry.create("replay", "cl", mem_size=4).plugins(CLContext(seed=0, datasets=datasets))[0]
    plugin.seen = 1

    class Strategy:
        adapted_dataset = datasets[1]

    plugin.after_train_dataset_adaptation(Strategy)
    assert len(Strategy.adapted_dataset) == 14


def test_ewc_penalty_gradient_matches_autograd():
    from strategies.ewc import AdapterEWCPlugin

    torch.manual_seed(int(torch.randint(0, 1000, (1,))))
    model = torch.nn.Linear(5, 3)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    plugin = AdapterEWCPlugin(ewc_lambda=7.0, fisher_batches=1)
    plugin.terms = [(fisher, anchor), ({n: 2 * f for n, f in fisher.items()}, {n: a + 1 for n, a in anchor.items()})]

    penalty = sum(0.5 * 7.0 * (f[n] * (p - a[n]) ** 2).sum()
                  for f, a in plugin.terms for n, p in model.named_parameters())
    penalty.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    class Strategy:
        pass

    Strategy.model = model
    plugin.before_update(Strategy)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n])


@pytest.mark.parametrize("name, options, fragment", [
    ("replay", {"mem_size": 0}, "mem_size"),
    ("replay", {"memsize": 3}, "did you mean 'mem_size'"),
    ("ewc", {"ewc_lambda": -1}, "ewc_lambda"),
    ("ewc", {"mode": "both"}, "mode"),
])
def test_bad_options(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        registry.create(name, "cl", **options)
