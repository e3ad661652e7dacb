"""lm-eval parity: real items rendered by lm-eval 0.4.13's own task definitions and by the project must give
identical strings (contexts, continuations/targets, stop sequences, generation settings, answer regexes),
and on MMLU the letter log-likelihoods of lm-eval's HF backend must equal ours.

lm-eval's shipped YAMLs (gsm8k/gsm8k-cot.yaml, mmlu/default/, mmlu_pro/) are loaded through its TaskManager
with only the data swapped: a wrapper YAML `include`s the shipped file and points `dataset_path: json` at
the real files under the data root (docs in the upstream/HF shape, read here with the csv/json modules,
independently of the project's loaders). lm-eval is a dev dependency: a missing lm-eval is an import error
here, never a skip.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lm_eval
import pytest
import torch
import yaml
from lm_eval.tasks import TaskManager

from clsharelora.data import load_benchmark
from clsharelora.evaluation.gsm8k import FLEXIBLE, PROTOCOLS, GSM8KEvaluator
from clsharelora.evaluation.multiple_choice import COT_ANSWER, MMLUEvaluator, MMLUProEvaluator
from clsharelora.paths import data_root
from clsharelora.prompts import GSM8K_COT_EXEMPLARS, LETTERS

TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"
HF_DEFAULT_MAX_GEN_TOKS = 256          # lm_eval.models.huggingface.HFLM.max_gen_toks (gsm8k_cot sets none)
GSM8K_ITEMS = (0, 2, 5, 7, 1318)       # "$" amounts, "%", the last item
MMLU_ITEMS = {"abstract_algebra": (0, 1, 2), "high_school_psychology": (5, 9), "college_medicine": (1, 3, 4)}
MMLU_PRO_ITEMS = {"business": (70, 134, 264), "math": (7717, 7724), "chemistry": (3544,), "law": (866,)}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _mmlu_docs(subject: str, split: str) -> list[dict]:
    """The upstream CSV rows in the HF `cais/mmlu` shape lm-eval's template reads."""
    with open(data_root() / "mmlu" / split / f"{subject}_{split}.csv", newline="", encoding="utf-8") as fh:
        return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans.strip())}
                for q, a, b, c, d, ans in csv.reader(fh)]


def lm_eval_task(tmp: Path, shipped: str, name: str, splits: dict[str, list[dict]], num_fewshot: int | None = None):
    """lm-eval's shipped task `shipped` (a YAML under lm_eval/tasks) over local docs, requests built;
    `num_fewshot` as lm-eval's --num_fewshot (None: the task's own)."""
    files = {}
    for split, docs in splits.items():
        path = tmp / f"{name}.{split}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        files[split] = str(path)
    wrapper = {"include": str(TASKS / shipped), "task": name, "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": files, "cache_dir": str(tmp / "hf_cache")}}
    if num_fewshot is not None:
        wrapper["num_fewshot"] = num_fewshot
    folder = tmp / name
    folder.mkdir()
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(wrapper), encoding="utf-8")
    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    task.build_all_requests()
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return task, [by_doc[i] for i in sorted(by_doc)]


def prompt_count(ev, text: str) -> int:
    (count,) = {p.count(text) for p in ev.prompts}
    return count


def _filter_regexes(task) -> dict[str, str]:
    return {f["name"]: f["filter"][0]["regex_pattern"] for f in task.config.filter_list}


def test_gsm8k_cot_default_is_string_identical_to_lm_eval(tmp_path):
    docs = _jsonl(data_root() / "gsm8k" / "test.jsonl")
    task, requests = lm_eval_task(tmp_path, "gsm8k/gsm8k-cot.yaml", "parity_gsm8k_cot",
                                  {"test": [docs[i] for i in GSM8K_ITEMS]})
    test = load_benchmark("gsm8k", "test")
    ours = GSM8KEvaluator(records=[test[i] for i in GSM8K_ITEMS])          # every option at its default
    from lm_eval.models.huggingface import HFLM

    assert HFLM.max_gen_toks.fget(None) == HF_DEFAULT_MAX_GEN_TOKS   # the backend's default, read from lm-eval
    assert ours.label == "lm-eval:gsm8k_cot" and task.config.num_fewshot == len(ours.shots) == 8
    assert [(s["question"], s["target"]) for s in task.fewshot_cfg.samples] == \
        list(GSM8K_COT_EXEMPLARS)
    for (inst,), prompt, record, doc in zip(requests, ours.prompts, ours.records, (docs[i] for i in GSM8K_ITEMS)):
        context, gen_kwargs = inst.args
        assert context == prompt
        assert gen_kwargs["until"] == list(ours.stop)
        assert gen_kwargs["do_sample"] is False
        assert gen_kwargs.get("max_gen_toks", HF_DEFAULT_MAX_GEN_TOKS) == ours.max_new_tokens
        assert task.doc_to_target(doc).replace(",", "") == record.answer
    regexes = _filter_regexes(task)
    assert regexes["strict-match"] == PROTOCOLS["gsm8k_cot"].strict.pattern
    assert regexes["flexible-extract"] == FLEXIBLE.pattern


def _mmlu_pair(tmp_path, subject: str, shots: int = 5):
    """lm-eval `mmlu_<subject>` run with --num_fewshot `shots` (its YAML sets none: 0) and our evaluator."""
    tests = _mmlu_docs(subject, "test")
    index = MMLU_ITEMS[subject]
    task, requests = lm_eval_task(tmp_path, f"mmlu/default/mmlu_{subject}.yaml", f"parity_mmlu_{subject}_{shots}",
                                  {"test": [tests[i] for i in index], "dev": _mmlu_docs(subject, "dev")},
                                  num_fewshot=shots)
    records = load_benchmark("mmlu", "test", subjects=[subject], source="files")
    ours = MMLUEvaluator(records=[records[i] for i in index], shots=shots)
    return task, requests, ours


@pytest.mark.parametrize("subject", sorted(MMLU_ITEMS))
@pytest.mark.parametrize("shots", [5, 0])
def test_mmlu_is_string_identical_to_lm_eval(tmp_path, subject, shots):
    task, requests, ours = _mmlu_pair(tmp_path, subject, shots)
    assert prompt_count(ours, "\nAnswer:") == shots + 1
    assert ours.label == "lm-eval:mmlu"
    for insts, prompt, record in zip(requests, ours.prompts, ours.records):
        assert [i.args[0] for i in insts] == [prompt] * 4
        assert [i.args[1] for i in insts] == ours.letters[:4]      # " A".." D" after lm-eval's target_delimiter
        assert task.doc_to_target(insts[0].doc) == LETTERS.index(record.answer)


def test_mmlu_pro_cot_is_string_identical_to_lm_eval(tmp_path):
    tests = _jsonl(data_root() / "mmlu_pro" / "test.jsonl")
    validation = _jsonl(data_root() / "mmlu_pro" / "validation.jsonl")
    records = {r.meta["question_id"]: r for r in load_benchmark("mmlu_pro", "test")}
    checked = 0
    for category, ids in MMLU_PRO_ITEMS.items():
        slug = category.replace(" ", "_")
        task, requests = lm_eval_task(tmp_path, f"mmlu_pro/mmlu_pro_{slug}.yaml", f"parity_mmlu_pro_{slug}",
                                      {"test": [d for d in tests if d["question_id"] in ids],
                                       "validation": validation})
        ours = MMLUProEvaluator(records=[records[i] for i in sorted(ids)], shots=5, mode="cot")
        assert ours.label == "lm-eval:mmlu_pro" and task.config.num_fewshot == 5
        assert len(requests) == len(ids)
        for (inst,), prompt, record in zip(requests, ours.prompts, ours.records):
            context, gen_kwargs = inst.args
            assert context == prompt
            assert gen_kwargs["until"] == list(ours.stop)
            assert gen_kwargs["max_gen_toks"] == ours.max_new_tokens == 2048
            assert gen_kwargs["do_sample"] is False
            assert task.doc_to_target(inst.doc) == record.answer
            checked += 1
        assert _filter_regexes(task)["custom-extract"] == COT_ANSWER.pattern
    assert checked == sum(len(v) for v in MMLU_PRO_ITEMS.values())
    # the chosen items exercise what used to differ: option text with surrounding whitespace
    assert any(o != o.strip() for i in (264, 7717) for o in records[i].choices)


def test_mmlu_letter_predictions_equal_lm_eval_hf_backend(tmp_path):
    """lm-eval's HFLM on the same in-memory model scores the parity items; its per-letter log-likelihoods
    must equal ours (so the predictions cannot diverge). tiny-llama: seconds of CPU."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from clsharelora.evaluation.generation import eval_context
    from clsharelora.evaluation.multiple_choice import predict_letters
    from clsharelora.evaluation.nll import letter_logprobs
    from clsharelora.models import load_model, load_tokenizer

    model, tok = load_model("tiny-llama", seed=int(torch.randint(0, 10**6, (1,)))), load_tokenizer("tiny-llama")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", dtype="float32")
    compared = 0
    for subject in ("abstract_algebra", "college_medicine"):
        task, _, ours = _mmlu_pair(tmp_path, subject)
        out = evaluate(lm=lm, task_dict={task.task_name: task}, bootstrap_iters=0, log_samples=True,
                       verbosity="ERROR")
        theirs = torch.tensor([[r[0] for r in s["filtered_resps"]] for s in sorted(out["samples"][task.task_name],
                                                                          key=lambda s: s["doc_id"])])
        with eval_context(model, autocast=False):
            mine = letter_logprobs(model, tok, ours.prompts, ours.letters, batch_size=4, contexts=ours.contexts)
        # lm-eval's loglikelihood of " X" given the prompt is the log-softmax at the prompt's last position
        assert torch.allclose(mine, theirs.float(), atol=1e-4), (mine, theirs)
        top2 = mine.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1] > 1e-3).tolist()      # a float-noise tie may break either way
        ours_pred, their_pred = predict_letters(mine, [4] * len(mine)), predict_letters(theirs, [4] * len(theirs))
        assert [a for a, c in zip(ours_pred, clear) if c] == [b for b, c in zip(their_pred, clear) if c]
        compared += len(mine)
    assert compared == 6
