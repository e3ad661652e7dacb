"""Shared fixtures: a tiny stream on the real data files, and the tiny random Llama for fast tests."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", message="no QP solver found")
torch.set_num_threads(min(2, os.cpu_count() or 1))
# the suite's thread count is an explicit setting, so the CLI's own choice (clsharelora.hardware) keeps it
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

TINY_STREAM = """\
name: tiny
experiences:
  - name: gsm8k
    train: {benchmark: gsm8k, split: train, n: 8, max_steps: 2, max_length: 256}
    eval: {task: gsm8k, n: 2, shots: 1, max_new_tokens: 6}
  - name: mmlu
    train: {benchmark: mmlu, split: dev, n: 8, max_steps: 2, max_length: 256}
    eval: {task: mmlu, n: 4, shots: 1}
"""


def data_root_with_gsm8k_train(tmp_path: Path, gsm8k_train: bytes | str) -> Path:
    """A data root like the real one (its folders linked), whose gsm8k/train.jsonl holds `gsm8k_train`: for
    tests of what a bad data file does."""
    from clsharelora.paths import data_root

    root = tmp_path / "data"
    root.mkdir()
    for child in data_root().iterdir():
        if child.name != "gsm8k":
            (root / child.name).symlink_to(child)
    (root / "gsm8k").mkdir()
    data = gsm8k_train.encode() if isinstance(gsm8k_train, str) else gsm8k_train
    (root / "gsm8k" / "train.jsonl").write_bytes(data)
    (root / "gsm8k" / "test.jsonl").symlink_to(data_root() / "gsm8k" / "test.jsonl")
    return root


@pytest.fixture
def tiny_stream(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STREAM)
    return path


@pytest.fixture(scope="session")
def tiny_stream_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("streams") / "tiny.yaml"
    path.write_text(TINY_STREAM)
    return path


def _llama_sentencepiece_model() -> Path | None:
    """mistral_common's Llama-style SentencePiece model (32k vocab), found without importing the package
    (CI installs it with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


TOKENIZERS = ("llama-sp-legacy", "llama-sp", "smollm2")


@pytest.fixture(scope="session")
def tokenizer_by_name(tmp_path_factory):
    """name -> tokenizer, loaded once per session: transformers' LlamaTokenizer on a real Llama-style
    SentencePiece model (dummy prefix space) with the legacy normaliser ("llama-sp-legacy") and without
    ("llama-sp"), and the GPT-2-style byte-level BPE of the embedded SmolLM2 ("smollm2", tiny-llama's too)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from clsharelora.models import load_tokenizer

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            if name == "smollm2":
                cache[name] = load_tokenizer("smollm2-135m")
            else:
                model = _llama_sentencepiece_model()
                if model is None:
                    pytest.skip("mistral_common/data/tokenizer.model.v1 is not installed "
                                "(pip install --no-deps mistral-common)")
                folder = tmp_path_factory.mktemp(name)
                shutil.copy(model, folder / "tokenizer.model")
                (folder / "tokenizer_config.json").write_text(json.dumps({
                    "tokenizer_class": "LlamaTokenizer", "legacy": name == "llama-sp-legacy",
                    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
                tok = AutoTokenizer.from_pretrained(folder)
                assert tok.convert_ids_to_tokens(tok("x\ndef")["input_ids"])[-1] == "def"  # a real SP model
                cache[name] = tok
        return cache[name]

    return get


@pytest.fixture(params=TOKENIZERS)
def any_tokenizer(request, tokenizer_by_name):
    return tokenizer_by_name(request.param)


@pytest.fixture(params=TOKENIZERS[:2])
def llama_sp_tokenizer(request, tokenizer_by_name):
    return tokenizer_by_name(request.param)


@pytest.fixture
def smollm2_tokenizer(tokenizer_by_name):
    return tokenizer_by_name("smollm2")
