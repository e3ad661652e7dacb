"""CausalLMTemplate: the update of one optimizer step equals the gradient of the token-mean loss over the
whole step, however it is split into micro-batches; prompt tokens never contribute; shared tensors once."""

from __future__ import annotations

import math

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.core import SupervisedPlugin
from transformers import AutoModelForCausalLM

from clsharelora import registry
from clsharelora.benchmarks.scenario import fit_to_length
from clsharelora.benchmarks.tokenized import IGNORE_INDEX, PadCollator, TokenizedPairs, encode_example
from clsharelora.config import TrainConfig
from clsharelora.models import configs
from clsharelora.training.template import CausalLMTemplate, trainable_parameters

VOCAB = 97


def _model(adapter="lora", **opts):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(configs.tiny_llama(vocab_size=VOCAB))
    model = registry.create(adapter, "adapter", r=4, dropout=0.0, **opts).apply(base)
    with torch.no_grad():  # B starts at zero in LoRA; make gradients of A non-trivial
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model


def _examples(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt_len = int(torch.randint(2, 9, (1,), generator=g))
        target_len = int(torch.randint(1, 7, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (prompt_len + target_len,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return out


class GradCapture(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.grads = None

    def before_update(self, strategy, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in strategy.model.named_parameters() if p.requires_grad}


def _one_step_grads(model, examples, batch_size, accum):
    data = AvalancheDataset([TokenizedPairs(examples, [str(i) for i in range(len(examples))])],
                            collate_fn=PadCollator(0))
    bench = benchmark_from_datasets(train=[data])
    capture = GradCapture()
    cfg = TrainConfig(lr=1e-3, batch_size=batch_size, global_batch=batch_size * accum, max_steps=1, warmup_ratio=0.0,
                      schedule="constant", max_grad_norm=None)
    strategy = CausalLMTemplate(model=model, train_config=cfg, plugins=[capture], progress=False)
    strategy.train(bench.train_stream[0])
    return capture.grads


def _reference_grads(model, examples):
    """Independent: sum of target-token NLL over all examples / number of target tokens, one by one."""
    model.zero_grad()
    total_tokens = sum(sum(1 for t in x["labels"][1:] if t != IGNORE_INDEX) for x in examples)
    for x in examples:
        ids = torch.tensor([x["input_ids"]])
        labels = torch.tensor([x["labels"]])
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
        (nll / total_tokens).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("batch_size, accum", [(4, 1), (2, 2), (1, 4), (3, 2)])
@pytest.mark.parametrize("adapter, opts", [("lora", {}), ("sharelora", {"variant": "share_a"})])
def test_step_gradient_is_token_mean_over_whole_step(batch_size, accum, adapter, opts):
    seed = int(torch.randint(0, 10_000, (1,)))
    examples = _examples(seed)
    reference = _reference_grads(_model(adapter, **opts), examples)
    got = _one_step_grads(_model(adapter, **opts), examples, batch_size, accum)
    assert got.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-6, msg=f"{name} (seed {seed})")


def test_only_positions_that_predict_a_target_reach_the_vocabulary():
    """The forward projects (target tokens, vocab) logits, not (batch, seq, vocab), and its loss is the HF
    loss over the full logits (sum of target NLL / step tokens)."""
    from types import SimpleNamespace

    examples = _examples(int(torch.randint(0, 10_000, (1,))))
    batch = PadCollator(0)(examples)
    model = _model()
    targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    fake = SimpleNamespace(engine_model=None, model=model, mbatch=batch, _step_tokens=targets,
                           _autocast=lambda: torch.autocast("cpu", enabled=False))
    out = CausalLMTemplate.forward(fake)
    assert out.logits.shape == (targets, VOCAB) and int(fake.logit_positions.sum()) == targets
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 num_items_in_batch=targets)
    assert full.logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.logits, full.logits[fake.logit_positions], rtol=1e-5, atol=1e-5)


def test_trainable_parameters_lists_shared_tensors_once():
    model = _model("sharelora", variant="share_ab")
    params = trainable_parameters(model)
    assert len({id(p) for p in params}) == len(params)
    assert sum(p.numel() for p in params) == registry.create(
        "sharelora", "adapter", r=4, variant="share_ab").expected_params(model.base_model.model.config)


def test_encode_example_masks_the_prompt_and_never_cuts():
    class Tok:  # one token per character after a BOS of 1: the joint tokenisation is the concatenation
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": ([1] if add_special_tokens else []) + ids}

    enc = encode_example(Tok(), "abcdef", "XY")
    assert enc["input_ids"] == [1, 97, 98, 99, 100, 101, 102, 88, 89, 2]
    assert enc["labels"] == [IGNORE_INDEX] * 7 + [88, 89, 2]
    # over-long examples are dropped whole and counted, never cut (scenario.fit_to_length)
    short = encode_example(Tok(), "ab", "X")
    kept, ids, stats = fit_to_length([enc, short], ["long", "short"], experience="e", max_length=5, setting="k")
    assert kept == [short] and ids == ["short"]
    assert (stats.kept, stats.dropped_too_long, stats.target_tokens, stats.longest) == (1, 1, 2, 10)


def test_pad_collator_right_pads_and_masks():
    batch = PadCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


class StepRecorder(SupervisedPlugin):
    """The example ids (first token) of every micro-batch, grouped by optimizer step."""

    def __init__(self):
        super().__init__()
        self.steps, self._current = [], []

    def before_forward(self, strategy, **kwargs):
        ids = strategy.mbatch["input_ids"][:, 0]
        self._current += [int(i) for i in ids]

    def before_update(self, strategy, **kwargs):
        self.steps.append(self._current)
        self._current = []


def _tagged_dataset(n: int):
    examples = [{"input_ids": [3 + i, 1, 2], "labels": [IGNORE_INDEX, 1, 2]} for i in range(n)]
    return AvalancheDataset([TokenizedPairs(examples, [str(i) for i in range(n)])], collate_fn=PadCollator(0))


def _planned_steps(n, batch_size, global_batch, world_size, rank, epochs=1, schedule_lrs=None):
    from clsharelora.training.distributed import Dist

    bench = benchmark_from_datasets(train=[_tagged_dataset(n)])
    recorder = StepRecorder()
    cfg = TrainConfig(lr=1e-3, batch_size=batch_size, global_batch=global_batch, epochs=epochs, warmup_ratio=0.25,
                      schedule="cosine", max_grad_norm=None)
    # A rank of a W-process job without a process group: collectives are the identity, the data split is real.
    strategy = CausalLMTemplate(model=_model(), train_config=cfg, plugins=[recorder], progress=False, seed=3,
                                dist=Dist(rank=rank, world_size=world_size))
    lrs = []

    class LR(SupervisedPlugin):
        def before_update(self, s, **kwargs):
            lrs.append(s.optimizer.param_groups[0]["lr"])

    strategy.plugins.append(LR())
    strategy.train(bench.train_stream[0])
    return recorder.steps, lrs, strategy.steps_in_exp


@pytest.mark.parametrize("n, batch_size, global_batch, world_size, epochs", [
    (10, 2, 4, 2, 1), (13, 1, 6, 3, 2), (7, 2, 8, 4, 1), (16, 4, 8, 2, 1)])
def test_global_batch_fixes_steps_schedule_and_step_contents_for_any_world_size(n, batch_size, global_batch,
                                                                               world_size, epochs):
    """The same config on 1 and on W processes: ceil(n / global_batch) optimizer steps per epoch, the same LR
    schedule, and the union over ranks of step k's examples = the 1-process step k (padding aside)."""
    one, lrs_one, planned_one = _planned_steps(n, batch_size, global_batch, 1, 0, epochs)
    per_epoch = math.ceil(n / global_batch)
    expected = per_epoch * epochs
    assert planned_one == len(one) == expected
    for e in range(epochs):  # one epoch = every example once, in full global batches but the last
        epoch = one[e * per_epoch:(e + 1) * per_epoch]
        assert all(len(s) == global_batch for s in epoch[:-1]) and sorted(sum(epoch, [])) == list(range(3, 3 + n))
    ranks = [_planned_steps(n, batch_size, global_batch, world_size, r, epochs) for r in range(world_size)]
    for steps, lrs, planned in ranks:
        assert planned == len(steps) == expected
        assert lrs == pytest.approx(lrs_one)
    for k in range(expected):
        union = set().union(*(set(steps[k]) for steps, _, _ in ranks))
        if (k + 1) % per_epoch:  # every step but an epoch's last: exactly the same examples
            assert union == set(one[k]) and sum(len(steps[k]) for steps, _, _ in ranks) == global_batch
        else:  # the last step: the same examples, plus DistributedSampler's padding repeats of earlier ones
            assert set(one[k]) <= union


def test_global_batch_that_does_not_divide_is_a_config_error():
    from clsharelora.config import accumulation_steps
    from clsharelora.errors import ConfigError

    assert accumulation_steps(TrainConfig(global_batch=16, batch_size=2), 4) == 2
    with pytest.raises(ConfigError, match=r"train.global_batch=16 is not divisible by train.batch_size x "
                                          r"processes = 4 x 8 = 32; allowed: .*multiple of 32.*dividing 2 \(1, 2\)"):
        accumulation_steps(TrainConfig(global_batch=16, batch_size=4), 8)


def test_an_old_config_with_grad_accum_says_what_to_write(tmp_path):
    from clsharelora.cli import main
    from clsharelora.config import from_dict
    from clsharelora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.grad_accum was removed; use train.global_batch .*e.g. 16 for "
                                          r"batch_size 4 x grad_accum 4 on one process"):
        from_dict({"train": {"batch_size": 4, "grad_accum": 4}})
    assert main(["run", "--model", "tiny-llama", "--set", "train.grad_accum=2", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
