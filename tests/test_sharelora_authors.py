"""The ShareLoRA authors' setup: their GSM8K training prompt (8 CoT exemplars in the input), their stream
and config, and the meta-device dry run of it. Reference: Rain9876/ShareLoRA (docs/sharelora.md)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from clsharelora.benchmarks.stream import load_stream
from clsharelora.cli import main
from clsharelora.config import TrainConfig
from clsharelora.data import load_benchmark
from clsharelora.errors import ConfigError, DataError
from clsharelora.paths import PROJECT_ROOT, data_root
from clsharelora.prompts import SHARELORA_GSM8K_COT8, prompt_for, target_for

AUTHORS = PROJECT_ROOT / "configs" / "llama2-7b-authors.yaml"


@pytest.fixture(scope="module")
def root():
    try:
        return data_root()
    except DataError as exc:
        pytest.skip(f"real benchmark files not available: {exc}")


def test_exemplars_are_wei_et_al_eight_with_the_authors_final_answer_line():
    # Wei et al. (2022) GSM8K exemplars: answers 6, 5, 39, 8, 9, 29, 33, 8, in this order.
    assert len(SHARELORA_GSM8K_COT8) == 8
    finals = [re.fullmatch(r".* The final answer is (\d+)", a, re.S).group(1) for _, a in SHARELORA_GSM8K_COT8]
    assert finals == ["6", "5", "39", "8", "9", "29", "33", "8"]
    assert SHARELORA_GSM8K_COT8[0][0].startswith("There are 15 trees in the grove.")


def test_gsm8k_train_prompt_is_the_authors_format(root):
    plain = load_benchmark("gsm8k", "train", root=root, source="files")[:50]
    authors = load_benchmark("gsm8k", "train", root=root, source="files", train_prompt="sharelora_cot8")[:50]
    # lora_llama3_share.py 1139-1144, written out again from their code:
    chats = "\n\n".join(f"Question: {q}\n\nAnswer: {a}" for q, a in SHARELORA_GSM8K_COT8)
    for p, a in zip(plain, authors):
        raw = p.meta["raw_answer"]
        assert prompt_for(a) == chats + "\n\nQuestion: " + p.question + "\n\nAnswer: "
        assert target_for(a) == re.sub(r"\n####", " The final answer is", raw)
        assert "<<" in raw or target_for(a).endswith(f"The final answer is {raw.rsplit('####', 1)[1].strip()}")
        # the default training prompt is untouched
        assert prompt_for(p) == f"Question: {p.question}\nAnswer:" and target_for(p).endswith("#### " + p.answer)
    assert sum("<<" in target_for(a) for a in authors) > 25  # calculator notes kept, as in their raw answers


def test_bad_train_prompt_is_a_config_error(root):
    with pytest.raises(ConfigError, match="train_prompt= must be one of plain, gsm8k_cot, sharelora_cot8, got 'cot'"):
        load_benchmark("gsm8k", "train", root=root, source="files", train_prompt="cot")


def test_authors_stream_and_config_values():
    stream = load_stream("paper-authors")
    assert stream.tasks == ["gsm8k", "humaneval", "mmlu", "mmlu_pro"]
    assert [e.train.max_steps for e in stream.experiences] == [3000] * 4
    assert stream.experiences[0].train.options == {"train_prompt": "sharelora_cot8"}
    assert stream.experiences[1].train.benchmark == "codealpaca"
    cfg = yaml.safe_load(AUTHORS.read_text())
    assert cfg["model"] == "llama2-7b" and cfg["stream"] == "streams/paper-authors.yaml"
    assert cfg["adapter"] == {"name": "sharelora", "variant": "share_a", "r": 64, "alpha": 16, "dropout": 0.1,
                              "targets": "q,v"}
    t = cfg["train"]
    assert (t["lr"], t["schedule"], t["max_grad_norm"], t["global_batch"], t["weight_decay"]) == \
        (1e-4, "constant", 0.3, 16, 0.0)


@pytest.mark.parametrize("model, lora, share", [
    ("llama2-7b", "33,554,432", "17,301,504"),   # docs/sharelora.md, q,v rows at r = 64
    ("llama3-8b", "27,262,976", "11,010,048"),
])
def test_authors_dry_run(capsys, model, lora, share):
    if "global_batch" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        pytest.skip("train.global_batch arrives with the trainproto branch (issue 11.3)")
    code = main(["compare", "--config", str(AUTHORS), "--strategies", "lora,sharelora", "--set", f"model={model}",
                 "--out", "runs/never-written", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"trainable parameters:  {lora}  (closed form {lora}: OK)" in out
    assert f"trainable parameters:  {share}  (closed form {share}: OK)" in out
    assert "1. gsm8k: train gsm8k/train (max_steps=3000;" in out and "2. code: train codealpaca/train" in out
    assert not (PROJECT_ROOT / "runs" / "never-written").exists()
