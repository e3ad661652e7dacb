"""A run's adapter outside the project (docs/interop.md): a ShareLoRA adapter directory is a plain peft LoRA
(per-layer copies) that peft, lm-eval's `--model hf --model_args pretrained=...,peft=...` and serving engines
load as it is, with the logits of the re-tied ShareLoRA model; merging changes logits only by float rounding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clsharelora.adapters import load_sharelora
from clsharelora.cli import main
from clsharelora.models import load_model, load_tokenizer

STREAM = """\
name: interop
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 4, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 1, shots: 0, generate: false}
"""
TEXT = ["Question: what is two plus three?\nAnswer: 5", "def add(a, b):\n    return a + b"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(base model directory, adapter directory) of a trained tiny ShareLoRA run (share_a), the base saved
    the way lm-eval and vLLM read one (config, weights, tokenizer)."""
    root = tmp_path_factory.mktemp("interop")
    (root / "s.yaml").write_text(STREAM)
    assert main(["run", "--stream", str(root / "s.yaml"), "--strategy", "sharelora", "--variant", "share_a",
                 "--model", "tiny-llama", "--no-progress", "--set", "train.batch_size=2",
                 "--set", "train.lr=0.01", "--out", str(root / "run")]) == 0
    base = root / "base"
    load_model("tiny-llama").save_pretrained(base)
    load_tokenizer("tiny-llama").save_pretrained(base)
    return base, root / "run" / "adapters" / "exp_1"


def logits(model, tok):
    batch = tok(TEXT, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**batch).logits * batch["attention_mask"][..., None]


def test_a_sharelora_adapter_loads_in_plain_peft_with_the_same_logits(exported):
    from peft import PeftModel

    base, adapter = exported
    tok = load_tokenizer("tiny-llama")
    weights = load_file(adapter / "adapter_model.safetensors")
    layers = json.loads((adapter / "sharelora.json").read_text())["groups"]
    # per-layer copies: every member of every shared group has its own lora_A key
    for members in layers.values():
        for name in members:
            assert any(k.endswith(f"{name}.lora_A.weight") for k in weights), name
    plain = PeftModel.from_pretrained(load_model("tiny-llama"), str(adapter)).eval()
    tied = load_sharelora(load_model("tiny-llama"), adapter, is_trainable=False).eval()
    untouched = logits(load_model("tiny-llama").eval(), tok)
    got, want = logits(plain, tok), logits(tied, tok)
    assert not torch.equal(want, untouched)          # the adapter was trained: it changes the logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    merged = logits(tied.merge_and_unload(), tok)
    assert (merged - want).abs().max() < 1e-4


def test_export_writes_a_plain_lora_and_a_merged_checkpoint_with_the_run_logits(exported, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = exported
    tok = load_tokenizer("tiny-llama")
    want = logits(load_sharelora(load_model("tiny-llama"), adapter, is_trainable=False).eval(), tok)
    assert main(["export", str(adapter), "--out", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == \
        ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "plain")).eval()
    torch.testing.assert_close(logits(plain, tok), want, rtol=0, atol=0)
    assert main(["export", str(adapter), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (logits(merged, tok) - want).abs().max() < 1e-4
    capsys.readouterr()
    assert main(["export", str(adapter), "--out", str(tmp_path / "plain")]) == 2      # never overwrites
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2         # not an adapter
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_lm_eval_scores_the_adapter_from_its_paths(exported, tmp_path):
    """`lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER` on a two-item local task gives the
    log-likelihoods of the run's model loaded by clsharelora, not those of the base."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    base, adapter = exported
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in
                            [("Question: 2+3?\nAnswer:", "5"), ("Question: 7-4?\nAnswer:", "3")]))
    (tmp_path / "tiny_local.yaml").write_text(
        "task: tiny_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: " {{a}}"\nmetric_list:\n  - metric: perplexity\n')
    tasks = TaskManager(include_path=str(tmp_path))

    def loglikelihoods(**model):
        out = lm_eval.simple_evaluate(tasks=["tiny_local"], task_manager=tasks, log_samples=True,
                                      batch_size=2, device="cpu", **model)
        return [s["resps"][0][0][0] for s in sorted(out["samples"]["tiny_local"], key=lambda s: s["doc_id"])]

    by_path = loglikelihoods(model="hf", model_args=f"pretrained={base},peft={adapter},dtype=float32")
    ours = load_sharelora(load_model("tiny-llama"), adapter, is_trainable=False).eval()
    in_memory = loglikelihoods(model=HFLM(pretrained=ours, tokenizer=load_tokenizer("tiny-llama"), batch_size=2))
    plain_base = loglikelihoods(model="hf", model_args=f"pretrained={base},dtype=float32")
    assert by_path == pytest.approx(in_memory, abs=1e-5)
    assert by_path != pytest.approx(plain_base, abs=1e-5)


def test_the_adapter_config_points_at_the_converted_base_in_the_cache():
    """SmolLM2 runs from the GGUF converted once into $CLSHARELORA_CACHE; peft records that directory as
    base_model_name_or_path, so the adapter names the base it was trained on."""
    from clsharelora import registry
    from clsharelora.models.smollm2 import embedded_dir
    from clsharelora.paths import cache_dir

    model = registry.create("sharelora", "adapter").apply(load_model("smollm2-135m"))
    where = model.peft_config["default"].base_model_name_or_path
    assert where == str(embedded_dir()) and embedded_dir().parent == cache_dir()

