"""O-LoRA, LwF and joint training (strategies/olora.py, lwf.py, joint.py) on the tiny model and real data:
closed forms computed by hand, equalities with naive training, frozen adapters, the teacher, the joint
sampling, and kill + resume (an exception right after a chosen checkpoint is written, then --resume).
Tests that train several runs are marked slow (30 s to 2 min each on 2 shared cores): make test-slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clsharelora import config as cfgmod
from clsharelora import models, registry
from clsharelora.training import runner
from clsharelora.training.checkpoint import Checkpointer
from clsharelora.training.template import CausalLMTemplate
from clsharelora.strategies import _adapter_copies as copies
from clsharelora.strategies.lwf import LwFPlugin, distillation_sum
from clsharelora.strategies.olora import OLoRAPlugin, SAVE_FILE, load_frozen, orthogonality

STREAM = """\
name: baselines
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_steps: 3, max_length: 256}
    eval: {task: gsm8k, n: 1, shots: 0, max_new_tokens: 2}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 8, max_steps: 3, max_length: 256}
    eval: {task: mmlu, n: 3, shots: 0}
"""
# epochs instead of steps, sizes 8 and 4 with batch 2: the sequential run takes 4 + 2 = 6 steps, which is
# exactly one pass over the 12-item union, so joint training must see each item exactly once.
JOINT_STREAM = """\
name: joint
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, epochs: 1, max_length: 256}
    eval: {task: gsm8k, n: 1, shots: 0, max_new_tokens: 2}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 4, epochs: 1, max_length: 256}
    eval: {task: mmlu, n: 3, shots: 0}
"""


class Killed(BaseException):
    """Stands for SIGKILL: raised right after a chosen checkpoint is on disk."""


def _config(stream: Path, out: Path, adapter: str, cl: str, **sets) -> cfgmod.RunConfig:
    name, _, variant = adapter.partition(":")
    data = {"model": "tiny-llama", "stream": str(stream), "out": str(out), "loggers": "",
            "adapter": {"name": name, "dropout": 0.1, **({"variant": variant} if variant else {})},
            "cl": {"name": cl}, "train": {"batch_size": 2, "global_batch": 2, "lr": 5e-3, "checkpoint_every": 1}}
    for key, value in sets.items():
        cfgmod.apply_override(data, f"{key.replace('__', '.')}={value}")
    return cfgmod.from_dict(data)


def _run(cfg, *, kill_at: str | None = None, monkeypatch=None) -> Path:
    if kill_at is None:
        return runner.run(cfg, progress=False)
    original = Checkpointer.save

    def save(self, strategy, **kwargs):
        path = original(self, strategy, **kwargs)
        if path.name == kill_at:
            raise Killed(path.name)
        return path

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(Killed):
        runner.run(cfg, progress=False)
    monkeypatch.setattr(Checkpointer, "save", original)
    return runner.run(cfg, resume=True, progress=False)


def _results(run: Path):
    data = json.loads((run / "results.json").read_text())
    return data["scores"]


def _adapter(run: Path, exp: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapters" / f"exp_{exp}" / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    (root / "s.yaml").write_text(STREAM)
    (root / "joint.yaml").write_text(JOINT_STREAM)
    return root


@pytest.fixture(scope="module")
def naive(streams):
    return _run(_config(streams / "s.yaml", streams / "naive", "lora", "naive"))


@pytest.fixture(scope="module")
def olora_runs(streams):
    s = streams / "s.yaml"
    return {lam: _run(_config(s, streams / f"olora-{lam}", "lora", "olora", cl__lambda_1=lam, cl__lambda_2=0.0))
            for lam in (0.0, 50.0)}


# ------------------------------------------------------------------------------------------------- O-LoRA
def test_orthogonality_term_matches_hand_computation():
    g = torch.Generator().manual_seed(123)
    pairs = [(torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)) for _ in range(3)]
    by_hand = sq = 0.0
    for old, new in pairs:  # sum_jk (sum_l old[j,l] new[k,l])^2 and its |.| twin, with plain loops
        for j in range(2):
            for k in range(2):
                o = sum(float(old[j, l]) * float(new[k, l]) for l in range(3))
                sq += o * o
                by_hand += abs(o)
    assert float(orthogonality(pairs, "squared")) == pytest.approx(sq, rel=1e-6)
    assert float(orthogonality(pairs, "abs")) == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("variant, per_frozen", [("lora", 14), ("share_a", 7), ("share_b", 14), ("share_ab", 7)])
def test_penalty_pairs_each_new_a_with_each_earlier_a_once(variant, per_frozen):
    """tiny-llama: 2 layers x 7 projection types; ShareA has one A per type, so 7 pairs per frozen adapter."""
    torch.manual_seed(0)
    model = models.load_model("tiny-llama", dtype=torch.float32, device="cpu", seed=0)
    name = "lora" if variant == "lora" else "sharelora"
    model = registry.create(name, "adapter", **({} if variant == "lora" else {"variant": variant})).apply(model)
    plugin = OLoRAPlugin(model, lambda_1=1.0, lambda_2=0.0, norm="squared", seed=0)
    plugin._freeze_trained()
    plugin._freeze_trained()
    pairs = plugin.pairs()
    assert len(pairs) == 2 * per_frozen
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable), "earlier adapters must be frozen"
    assert model.base_model.active_adapters == ["default", "olora_0", "olora_1"]
    expected = 0.0
    for layer in copies.lora_layers(model).values():  # per module, by hand; shared tensors counted once
        new = layer.lora_A["default"].weight
        for old_name in ("olora_0", "olora_1"):
            expected += float(((layer.lora_A[old_name].weight @ new.T) ** 2).sum())
    layers_per_group = 2 if variant in ("share_a", "share_ab") else 1
    assert float(plugin.penalty()[0]) == pytest.approx(expected / layers_per_group, rel=1e-5)
    assert float(plugin.penalty()[0]) > 0


@pytest.mark.slow
def test_olora_first_experience_equals_lora_bitwise(naive, olora_runs):
    """Before any frozen adapter exists O-LoRA adds nothing: row 1 and adapter 1 equal naive LoRA's bit for bit."""
    for run in olora_runs.values():
        assert _results(run)[:2] == _results(naive)[:2]
        assert _same(_adapter(run, 1), _adapter(naive, 1))


@pytest.mark.slow
def test_earlier_adapter_stays_bit_identical(olora_runs):
    run = olora_runs[50.0]
    first = _adapter(run, 1)
    frozen = load_file(str(run / "adapters" / "exp_2" / SAVE_FILE))
    restored = {k.replace("olora_0/", "") + ".weight": v for k, v in frozen.items()}
    assert _same(restored, first)
    checkpoint = Checkpointer(run).latest()
    assert all(".default." in k for k in load_file(str(checkpoint / "adapter.safetensors"))), \
        "only the trained adapter is trainable (checkpointed and optimised)"
    assert not _same(_adapter(run, 2), first), "the new adapter trained"


def _orth_after(run: Path) -> float:
    frozen, new = load_file(str(run / "adapters" / "exp_2" / SAVE_FILE)), _adapter(run, 2)
    pairs = [(frozen[f"olora_0/{k[:-len('.weight')]}"], v) for k, v in new.items() if ".lora_A." in k]
    return float(orthogonality(pairs, "squared"))


@pytest.mark.slow
def test_orthogonality_loss_decreases_overlap(olora_runs):
    free, pushed = _orth_after(olora_runs[0.0]), _orth_after(olora_runs[50.0])
    assert pushed < 0.5 * free, (pushed, free)


@pytest.mark.slow
def test_saved_row_reloads_with_all_its_adapters(olora_runs, streams):
    """adapters/exp_2 = trained adapter + frozen ones: reloading it reproduces the trained model's logits."""
    run = olora_runs[50.0]
    adapter = registry.create("lora", "adapter", dropout=0.1)
    torch.manual_seed(0)
    base = models.load_model("tiny-llama", dtype=torch.float32, device="cpu", seed=0)
    model = adapter.load(base, run / "adapters" / "exp_2", is_trainable=False)
    assert load_frozen(model, run / "adapters" / "exp_2") == ["olora_0"]
    model.eval()
    x = torch.randint(0, 100, (1, 9), generator=torch.Generator().manual_seed(1))
    with_frozen = model(input_ids=x).logits
    model.base_model.set_adapter("default")
    assert not torch.equal(with_frozen, model(input_ids=x).logits), "the frozen adapter contributes"
    assert json.loads((run / "results.json").read_text())["cost"]["params_per_experience"] == [
        {"experience": 0, "trainable": 16384, "adapter_total": 16384},
        {"experience": 1, "trainable": 16384, "adapter_total": 32768}]


def test_dry_run_checks_olora_counts_per_experience(streams):
    from clsharelora.dry_run import dry_run

    text = dry_run(_config(streams / "s.yaml", streams / "dry", "sharelora:share_a", "olora"))
    assert "experience 2: 12,288 / 24,576  (closed form 12,288 / 24,576: OK)" in text


# ---------------------------------------------------------------------------------------------------- LwF
def test_kl_term_matches_hand_computation():
    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    labels = torch.tensor([[-100, -100, 3, 1]])   # positions 1 and 2 predict target tokens
    from clsharelora.training.template import target_positions

    keep = target_positions(labels)               # the template projects only those positions
    assert keep.tolist() == [[False, True, True, False]]
    T = 2.0
    expected = 0.0
    for pos in (1, 2):
        p = [float(v) for v in torch.softmax(teacher[0, pos] / T, -1)]
        q = [float(v) for v in torch.softmax(student[0, pos] / T, -1)]
        expected += sum(pi * (torch.tensor(pi).log() - torch.tensor(qi).log()).item() for pi, qi in zip(p, q))
    assert float(distillation_sum(student[keep], teacher[keep], T)) == pytest.approx(T * T * expected, rel=1e-5)


@pytest.mark.parametrize("variant", ["share_a", "share_ab"])
def test_sharelora_teacher_is_a_tied_frozen_copy(variant):
    """The teacher adapter on ShareLoRA: tied per projection type like the trained one, frozen, and (right
    after the copy) giving the trained model's logits; the model keeps the trained adapter's sharing spec."""
    import contextlib
    from types import SimpleNamespace

    from clsharelora.adapters.sharing import SPEC_ATTR, SharingSpec, is_tied

    torch.manual_seed(0)
    model = models.load_model("tiny-llama", dtype=torch.float32, device="cpu", seed=0)
    model = registry.create("sharelora", "adapter", variant=variant).apply(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)   # B != 0, so the adapter changes the logits
    plugin = LwFPlugin(model, lwf_lambda=1.0, temperature=2.0)
    plugin._ensure_teacher()
    copies.copy_weights(model, copies.TRAINED, "lwf_teacher")
    spec = getattr(model, SPEC_ATTR)
    assert spec.adapter_name == "default"
    assert is_tied(model, SharingSpec(variant=spec.variant, groups=spec.groups, adapter_name="lwf_teacher"))
    x = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    model.eval()
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) < 0.5   # the student's target positions
    student = model(**batch, logits_to_keep=keep).logits
    teacher = plugin.teacher_logits(SimpleNamespace(mbatch=batch, _autocast=contextlib.nullcontext,
                                                    logit_positions=keep))
    assert teacher.shape == student.shape and torch.equal(student, teacher)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".default." in n for n in names)


def test_lwf_lambda_zero_equals_naive_bit_for_bit(naive, streams):
    run = _run(_config(streams / "s.yaml", streams / "lwf0", "lora", "lwf", cl__lwf_lambda=0.0))
    assert _results(run) == _results(naive)
    for exp in (1, 2):
        assert _same(_adapter(run, exp), _adapter(naive, exp))


@pytest.mark.slow
def test_teacher_is_the_pre_experience_model(streams, monkeypatch):
    """During experience 2 the teacher's logits are those of the model saved after experience 1."""
    seen = []
    original = LwFPlugin.teacher_logits

    def spy(self, strategy):
        logits = original(self, strategy)
        seen.append((strategy.mbatch["input_ids"].clone(), strategy.mbatch["attention_mask"].clone(),
                     strategy.logit_positions.clone(), logits))
        return logits

    monkeypatch.setattr(LwFPlugin, "teacher_logits", spy)
    run = _run(_config(streams / "s.yaml", streams / "lwf", "lora", "lwf"))
    assert len(seen) == 3, "one teacher forward per micro-batch of experience 2 only"
    adapter = registry.create("lora", "adapter", dropout=0.1)
    torch.manual_seed(0)
    base = models.load_model("tiny-llama", dtype=torch.float32, device="cpu", seed=0)
    before = adapter.load(base, run / "adapters" / "exp_1", is_trainable=False).eval()
    for ids, mask, keep, logits in seen:
        assert torch.equal(before(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits, logits)
    assert not _same(_adapter(run, 1), _adapter(run, 2))


# -------------------------------------------------------------------------------------------------- joint
def test_joint_sees_every_item_once_in_proportion(streams, monkeypatch):
    from clsharelora.benchmarks.scenario import make_benchmark
    from clsharelora.benchmarks.stream import load_stream

    seen = []
    original = CausalLMTemplate._unpack_minibatch

    def spy(self):
        original(self)
        for ids, mask in zip(self.mbatch["input_ids"], self.mbatch["attention_mask"]):
            seen.append(tuple(ids[mask.bool()].tolist()))

    monkeypatch.setattr(CausalLMTemplate, "_unpack_minibatch", spy)
    cfg = _config(streams / "joint.yaml", streams / "joint", "lora", "joint")
    run = _run(cfg)
    bench, _ = make_benchmark(load_stream(cfg.stream), models.load_tokenizer("tiny-llama"), max_length=256, seed=0)
    owner = {tuple(item["input_ids"]): i for i, e in enumerate(bench.train_stream) for item in e.dataset}
    counts = [sum(owner[s] == i for s in seen) for i in range(2)]
    assert counts == [8, 4] and len(set(seen)) == 12
    data = json.loads((run / "results.json").read_text())
    assert len(data["scores"]) == 2 and data["cost"]["joint"]["steps"] == 6

    # analysis: a reference, not an incomplete sequential run; its table row holds its final scores only
    from clsharelora.analysis.runs import load_run
    from clsharelora.analysis.tables import comparison_table

    loaded = load_run(run)
    assert loaded.is_reference and loaded.complete and loaded.status == "reference (joint training)"
    row = comparison_table([loaded]).iloc[0]
    assert row["strategy"] == "lora+joint (upper bound)"
    assert row["accuracy_acc"] == pytest.approx(sum(c["accuracy"] for c in data["scores"][1]) / 2)


# ------------------------------------------------------------------------------------------ kill + resume
@pytest.mark.slow
@pytest.mark.parametrize("adapter, cl, sets, kill_at", [
    ("lora", "olora", {"cl__lambda_1": 50.0}, "step-00000004-done-1"),
    ("sharelora:share_a", "olora", {"cl__lambda_2": 0.01}, "step-00000003-done-1"),
    ("lora", "lwf", {}, "step-00000005-done-1"),
    ("lora", "joint", {}, "step-00000003-done-0"),
])
def test_kill_and_resume_is_identical(streams, monkeypatch, adapter, cl, sets, kill_at):
    stream = streams / ("joint.yaml" if cl == "joint" else "s.yaml")
    tag = f"{adapter.replace(':', '-')}-{cl}"
    ref = _run(_config(stream, streams / f"ref-{tag}", adapter, cl, **sets))
    resumed = _run(_config(stream, streams / f"killed-{tag}", adapter, cl, **sets), kill_at=kill_at,
                   monkeypatch=monkeypatch)
    assert _results(resumed) == _results(ref)
    last = len(_results(ref)) - 1
    assert _same(_adapter(resumed, last), _adapter(ref, last))
    for extra in (SAVE_FILE,):
        a, b = ref / "adapters" / f"exp_{last}" / extra, resumed / "adapters" / f"exp_{last}" / extra
        assert a.is_file() == b.is_file() and (not a.is_file() or _same(load_file(str(a)), load_file(str(b))))
