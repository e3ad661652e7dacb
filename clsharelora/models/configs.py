"""Architecture configs written in code, so meta-device models (dry runs, parameter counts) need no hub."""

from __future__ import annotations

from transformers import GPT2Config, LlamaConfig, PretrainedConfig, RobertaConfig


def llama2_7b() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )


def llama2_13b() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )


def llama3_8b() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    )


def smollm2_135m() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )


def tiny_llama(vocab_size: int = 49152) -> LlamaConfig:
    """A 2-layer GQA Llama for unit tests; same vocabulary as SmolLM2 so it can share its tokenizer."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )


def gpt2_medium() -> GPT2Config:
    return GPT2Config(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257)


def roberta_base() -> RobertaConfig:
    return RobertaConfig(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
    )


ARCHITECTURES: dict[str, callable] = {
    "llama2-7b": llama2_7b,
    "llama2-13b": llama2_13b,
    "llama3-8b": llama3_8b,
    "smollm2-135m": smollm2_135m,
    "tiny-llama": tiny_llama,
    "gpt2-medium": gpt2_medium,
    "roberta-base": roberta_base,
}


def architecture(name: str) -> PretrainedConfig:
    return ARCHITECTURES[name]()
