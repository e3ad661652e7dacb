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


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_replay_ratio_fixes_the_memory_count_of_every_optimizer_step(world_size):
    """MixedOrder: each global step of G examples holds m memory items on any number of ranks; an epoch is
    one pass over the new data; the last, partial step keeps the proportion."""
    from clsharelora.strategies.replay import MixedOrder

    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, (1,))))
    n_new, n_memory = int(torch.randint(5, 60, (1,), generator=g)), int(torch.randint(1, 20, (1,), generator=g))
    global_batch = world_size * int(torch.randint(2, 5, (1,), generator=g))
    m = int(torch.randint(1, global_batch, (1,), generator=g))
    one = MixedOrder(n_new, n_memory, m, global_batch, seed=5).global_order()
    steps = [one[k:k + global_batch] for k in range(0, len(one), global_batch)]
    fresh = global_batch - m
    assert len(steps) == -(-n_new // fresh)
    for step in steps[:-1]:
        assert sum(i >= n_new for i in step) == m and len(step) == global_batch
    rest = n_new - fresh * (len(steps) - 1)
    assert sum(i >= n_new for i in steps[-1]) == len(steps[-1]) - rest == round(rest * m / fresh)
    assert sorted(i for i in one if i < n_new) == list(range(n_new)) and all(i < n_new + n_memory for i in one)
    ranks = [list(MixedOrder(n_new, n_memory, m, global_batch, rank=r, world_size=world_size, seed=5))
             for r in range(world_size)]
    share = global_batch // world_size  # what each rank consumes per optimizer step
    assert {len(r) for r in ranks} == {len(ranks[0])} and len(ranks[0]) == len(
        MixedOrder(n_new, n_memory, m, global_batch, rank=0, world_size=world_size))
    for k, step in enumerate(steps):
        union = sorted(sum((r[k * share:(k + 1) * share] for r in ranks), []))
        if k < len(steps) - 1:
            assert union == sorted(step)
        else:
            assert set(step) <= set(union)  # plus the end padding


def test_replay_ratio_counted_in_the_batches_training_sees():
    """A real training run: with ratio 0.25 and global batch 8 (micro-batch 2, accumulation 4) every
    optimizer step of the second experience has exactly 2 examples of the first."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.core import SupervisedPlugin

    from clsharelora.config import TrainConfig
    from clsharelora.training.template import CausalLMTemplate

    first = [{"input_ids": [3, 4, 5], "labels": [-100, 4, 5]} for _ in range(10)]
    second = [{"input_ids": [6, 4, 5], "labels": [-100, 4, 5]} for _ in range(30)]
    datasets = [AvalancheDataset([TokenizedPairs(x, [str(i) for i in range(len(x))])], collate_fn=PadCollator(0))
                for x in (first, second)]

    class Count(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.steps, self.now = [], []

        def before_forward(self, strategy, **kwargs):
            self.now += strategy.mbatch["input_ids"][:, 0].tolist()

        def before_update(self, strategy, **kwargs):
            self.steps.append((self.now.count(3), self.now.count(6)))
            self.now = []

    replay = registry.create("replay", "cl", mem_size=6, ratio=0.25).plugins(CLContext(seed=2, datasets=datasets))[0]
    count = Count()
    cfg = TrainConfig(lr=1e-3, batch_size=2, global_batch=8, epochs=1, warmup_ratio=0.0, max_grad_norm=None)
    strategy = CausalLMTemplate(model=_adapted_model("lora", layers=1), train_config=cfg,
                                plugins=[replay, count], progress=False)
    stream = benchmark_from_datasets(train=datasets).train_stream
    strategy.train(stream[0])
    assert count.steps == [(8, 0), (2, 0)]  # no memory yet: 10 new examples in ceil(10 / 8) = 2 steps
    count.steps = []
    strategy.train(stream[1])
    assert count.steps == [(2, 6)] * 5  # 30 new examples, 6 per step: 5 steps of 2 memory + 6 new


def test_ewc_penalty_gradient_matches_autograd():
    from clsharelora.strategies.ewc import AdapterEWCPlugin

    torch.manual_seed(int(torch.randint(0, 1000, (1,))))
    model = torch.nn.Linear(5, 3)
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    plugin = AdapterEWCPlugin(ewc_lambda=7.0)
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


VOCAB = 61


def _adapted_model(adapter: str, layers: int = 3, **opts):
    from transformers import AutoModelForCausalLM

    from clsharelora.models import configs

    config = configs.tiny_llama(vocab_size=VOCAB)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    model = registry.create(adapter, "adapter", r=2, dropout=0.0, **opts).apply(base)
    with torch.no_grad():  # LoRA's B starts at zero: make every gradient non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model


def _random_pairs(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        prompt, target = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (prompt + target,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return AvalancheDataset([TokenizedPairs(examples, [str(i) for i in range(n)])], collate_fn=PadCollator(0))


def _per_sample_fisher(model, data):
    """Independent reference: for each example alone, the mean NLL of its target tokens from the logits,
    its gradient by torch.autograd.grad, squared; averaged over the examples."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for i in range(len(data)):
        ids, labels = torch.tensor([data[i]["input_ids"]]), torch.tensor(data[i]["labels"])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100)
        for (name, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            total[name] += g ** 2
    return {n: t / len(data) for n, t in total.items()}


@pytest.mark.parametrize("adapter, opts", [("lora", {}), ("sharelora", {"variant": "share_a"}),
                                           ("sharelora", {"variant": "share_ab"})])
def test_ewc_fisher_is_the_mean_of_squared_per_sample_gradients(adapter, opts):
    """After training an experience, EWC's Fisher = 1/S Σ_s g_s² (per-sample gradients), shared tensors
    included; fisher_norm=layers divides a tensor shared by L layers by L and leaves per-layer tensors."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    from clsharelora.config import TrainConfig
    from clsharelora.training.template import CausalLMTemplate

    seed = int(torch.randint(0, 10_000, (1,)))
    data = _random_pairs(seed, 6)
    fishers = {}
    for norm in ("none", "layers"):
        model = _adapted_model(adapter, **opts)
        ewc = registry.create("ewc", "cl", fisher_samples=6, fisher_norm=norm).plugins(
            CLContext(seed=seed, datasets=[data]))[0]
        cfg = TrainConfig(lr=1e-2, batch_size=2, global_batch=4, max_steps=2, warmup_ratio=0.0, max_grad_norm=None)
        strategy = CausalLMTemplate(model=model, train_config=cfg, plugins=[ewc], progress=False, seed=seed)
        strategy.train(benchmark_from_datasets(train=[data]).train_stream[0])
        fishers[norm] = ewc.terms[0][0]
        reference = _per_sample_fisher(model, data)
    shared = [n for n in reference if ("lora_A" in n and opts.get("variant") in ("share_a", "share_ab"))
              or ("lora_B" in n and opts.get("variant") == "share_ab")]
    assert fishers["none"].keys() == reference.keys() and (bool(shared) == (adapter == "sharelora"))
    for name, ref in reference.items():
        torch.testing.assert_close(fishers["none"][name], ref, rtol=1e-4, atol=1e-10, msg=f"{name} (seed {seed})")
        torch.testing.assert_close(fishers["layers"][name], ref / (3 if name in shared else 1), rtol=1e-4,
                                   atol=1e-10, msg=f"{name} (seed {seed})")


def test_ewc_fisher_sample_is_seeded_random_and_covers_small_experiences():
    from clsharelora.strategies.ewc import fisher_sample

    a = fisher_sample(1000, 50, seed=3, exp_index=1)
    assert a == fisher_sample(1000, 50, seed=3, exp_index=1) and len(set(a)) == 50
    assert a != list(range(50)) and a != fisher_sample(1000, 50, seed=4, exp_index=1) \
        and a != fisher_sample(1000, 50, seed=3, exp_index=2)
    assert sorted(fisher_sample(7, 50, seed=3, exp_index=0)) == list(range(7))


@pytest.mark.parametrize("name, options, fragment", [
    ("ewc", {"fisher_batches": 16}, "replaced by 'fisher_samples'"),
    ("ewc", {"fisher_samples": 0}, "fisher_samples"),
    ("ewc", {"fisher_norm": "max"}, "fisher_norm must be one of none, layers"),
    ("replay", {"mem_size": 0}, "mem_size"),
    ("replay", {"ratio": 1.0}, r"cl.ratio must be a number in \(0, 1\)"),
    ("replay", {"memsize": 3}, "did you mean 'mem_size'"),
    ("ewc", {"ewc_lambda": -1}, "ewc_lambda"),
    ("ewc", {"mode": "both"}, "mode"),
])
def test_bad_options(name, options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        registry.create(name, "cl", **options)
