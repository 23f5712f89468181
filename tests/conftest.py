"""Shared fixtures: tiny random models of every supported text family, built from configs offline.

The tokenizer is a small byte-level BPE trained on the occupation benchmark's own prompts, so some
options are single tokens and some are not, and both scoring paths are exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the workers share the cores: each gets its share of torch threads, since
    two workers each running a matmul on every core would only take turns."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dso_cli.benchmarks.occupation import build

    splits = build(n_train=64, n_train_unambiguous=32, test_pairs_per_occupation=1, val_pairs_per_occupation=1)
    corpus = [row["prompt"] + " " + row["answer_prefix"] + "".join(row["options"]) for row in splits["test"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def build_sentencepiece_tokenizer(vocab_size: int = 400):
    """A Llama-2-style tokenizer: ``▁`` marks word starts, a BOS token is prepended, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from dso_cli.benchmarks.occupation import build

    splits = build(n_train=64, n_train_unambiguous=32, test_pairs_per_occupation=1, val_pairs_per_occupation=1)
    corpus = [row["prompt"] + " " + row["answer_prefix"] + "".join(row["options"]) for row in splits["test"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_config(family: str, vocab_size: int):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "mistral":
        return MistralConfig(**common)
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=8)
    if family == "phi3":
        return Phi3Config(**common, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gemma3_text":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=16, final_logit_softcapping=30.0)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=8, final_logit_softcapping=30.0)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512)
    raise ValueError(family)


def build_tiny_model(family: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama + tokenizer: loadable by path like any local checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def items():
    """Occupation test items (some options span several tokens) plus one item with three options."""
    from dso_cli.benchmarks.occupation import build

    test = build(test_pairs_per_occupation=1)["test"].to_list()
    three_options = dict(
        test[7], options=[" a carpenter", " the woman", " x"], option_groups=["male", "female", "unknown"]
    )
    return [*test[:6], three_options]
