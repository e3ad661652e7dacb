"""Model registry and the embedded SmolLM2: real GGUF -> safetensors conversion, meta construction."""

from __future__ import annotations

import json

import pytest
import torch

from clsharelora import models
from clsharelora.errors import ConfigError
from clsharelora.models import smollm2


def test_registry_resolves_names_paths_and_hub_ids(tmp_path):
    assert models.resolve("llama2-7b").source == "meta-llama/Llama-2-7b-hf"
    assert models.resolve("smollm2-135m").source == "embedded"
    assert models.resolve("org/some-model").source == "org/some-model"
    assert models.resolve(str(tmp_path)).source == str(tmp_path)
    with pytest.raises(ConfigError, match="unknown model 'llama9'.*llama2-13b.*smollm2-135m"):
        models.resolve("llama9")


@pytest.mark.parametrize("name, params", [
    ("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320), ("llama3-8b", 8_030_261_248),
    ("smollm2-135m", 134_515_008),
])
def test_meta_models_have_published_sizes_and_no_weights(name, params):
    model = models.meta_model(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == params


def test_gguf_is_found_through_package_metadata():
    path = smollm2.gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_embedded_model_is_a_plain_trainable_checkpoint():
    directory = smollm2.embedded_dir()
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(directory.glob("*.safetensors"))
    model = models.load_model("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_second_load_comes_from_the_cache(monkeypatch):
    first = smollm2.embedded_dir()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(smollm2, "_convert", no_conversion)
    assert smollm2.embedded_dir() == first


@pytest.mark.slow  # a second full conversion (~20-60 s); the default suite converts once into the real cache
def test_conversion_writes_into_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSHARELORA_CACHE", str(tmp_path))
    directory = smollm2.embedded_dir()
    assert directory.parent == tmp_path and (directory / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "no half-written conversion left behind"


def test_embedded_model_knows_the_capital_of_france():
    tokenizer = models.load_tokenizer("smollm2-135m")
    model = models.load_model("smollm2-135m")
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_tiny_llama_is_seeded_random_init_with_the_smollm2_tokenizer():
    a, b = models.load_model("tiny-llama", seed=3), models.load_model("tiny-llama", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == len(models.load_tokenizer("tiny-llama"))
