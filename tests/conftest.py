"""Shared fixtures: a tiny random Llama-style decoder with a character-level tokenizer (no downloads)."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import torch

# `precision: auto` resolves by the CPU (influcoder.core.hardware): the suite states "bf16 emulated" so that auto
# means float32 on every machine, whatever its CPU (subprocesses inherit it); tests of the other outcome fake it.
os.environ["INFLUCODER_CPU_BF16"] = "emulated"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    chars = list(dict.fromkeys(string.printable))
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + tokenizer saved as a local folder, usable as --model."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


SAMPLE_ROWS = [
    {"id": "a", "prompt": "What is 2+2?", "response": "4, obviously."},
    {"id": "b", "prompt": "Name a colour.", "response": "Blue is a colour that many people like."},
    {"id": "c", "prompt": "Say hi", "response": "Hi!"},
    {"id": "d", "prompt": "Translate 'chat' to English.", "response": "cat"},
    {"id": "e", "prompt": "Write a haiku about rain on a tin roof at night.", "response": "Tin drums in the dark / each drop a small percussion / sleep arrives late, wet."},
    {"id": "f", "prompt": "List three primes.", "response": "2, 3 and 5."},
    {"id": "g", "prompt": "Is water wet?", "response": "It makes other things wet."},
    {"id": "h", "prompt": "Capital of France?", "response": "Paris."},
    {"id": "i", "prompt": "Explain gravity in one line.", "response": "Mass attracts mass."},
    {"id": "j", "prompt": "Reverse 'abc'.", "response": "cba"},
]


@pytest.fixture
def sample_jsonl(tmp_path) -> Path:
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in SAMPLE_ROWS))
    return p
