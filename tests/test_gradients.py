"""Batched per-example LoRA gradients must equal one backward per example (the obviously-correct reference)."""

from __future__ import annotations

import pytest
import torch

from influcoder.teacher.gradients import LoraGradients, LoraSettings, block_linear_names
from influcoder.data.records import Record
from influcoder.teacher.tokenization import collate, encode_record

from conftest import SAMPLE_ROWS, make_tiny_llama, make_tokenizer


def _records():
    return [Record(r["id"], r["prompt"], r["response"], row=i) for i, r in enumerate(SAMPLE_ROWS)]


def _randomised_lora(include_a="yes", seed=0):
    """Tiny model with LoRA whose B is random too, so A-gradients are non-zero and both are tested."""
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    lg = LoraGradients(model, LoraSettings(rank=4, alpha=8, seed=seed, include_lora_a=include_a))
    g = torch.Generator().manual_seed(123)
    for _, p in lg.lora_parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    lg._build_slots()
    return lg, tok


def reference_gradients(lg: LoraGradients, tok, encoded) -> torch.Tensor:
    """One example at a time, no padding, HF's own loss (mean over response tokens), autograd .grad."""
    params = dict(lg.lora_parameters())
    for p in params.values():
        p.requires_grad_(True)
    rows = []
    try:
        for e in encoded:
            ids = torch.tensor([e.ids])
            labels = ids.clone()
            labels[0, : e.prompt_len] = -100
            for p in params.values():
                p.grad = None
            out = lg.causal_lm(input_ids=ids, labels=labels)
            out.loss.backward()
            parts = []
            for s in lg.slots:
                pname = s.name.replace(".lora_A", ".lora_A.default.weight").replace(".lora_B", ".lora_B.default.weight")
                parts.append(params[pname].grad.detach().flatten().clone())
            rows.append(torch.cat(parts))
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
    return torch.stack(rows)


def _rel_err(a, b):
    return float((a - b).norm(dim=1).max() / b.norm(dim=1).min())


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_per_example_reference(batch_size, padding_side):
    torch.manual_seed(0)
    lg, tok = _randomised_lora()
    enc = [encode_record(tok, r, 64) for r in _records()[:8]]
    ref = reference_gradients(lg, tok, enc)
    assert lg.includes_lora_a
    assert ref.abs().sum() > 0
    got = []
    for i in range(0, len(enc), batch_size):
        got.append(lg.flat(collate(enc[i : i + batch_size], tok.pad_token_id, padding_side)))
    got = torch.cat(got)
    for i in range(len(enc)):
        err = float((got[i] - ref[i]).norm() / ref[i].norm())
        assert err <= 1e-5, (i, err)


def test_same_example_same_gradient_in_any_batch():
    lg, tok = _randomised_lora()
    enc = [encode_record(tok, r, 64) for r in _records()]
    alone = lg.flat(collate([enc[4]], tok.pad_token_id))[0]
    for batch, pos in ([enc[4], enc[0], enc[1]], 0), ([enc[2], enc[3], enc[4], enc[9]], 2):
        for side in ("left", "right"):
            g = lg.flat(collate(batch, tok.pad_token_id, side))[pos]
            assert float((g - alone).norm() / alone.norm()) <= 1e-5


def test_fresh_lora_a_gradient_is_zero_and_auto_drops_it():
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    lg_all = LoraGradients(model, LoraSettings(rank=4, include_lora_a="yes"))
    enc = [encode_record(tok, r, 64) for r in _records()[:3]]
    g = lg_all.flat(collate(enc, tok.pad_token_id))
    a_dims = sum(s.shape[0] * s.shape[1] for s in lg_all.slots if s.name.endswith("lora_A"))
    assert a_dims > 0
    off = 0
    b_parts = []
    for s in lg_all.slots:
        size = s.shape[0] * s.shape[1]
        if s.name.endswith("lora_A"):
            assert float(g[:, off : off + size].abs().max()) == 0.0
        else:
            b_parts.append(g[:, off : off + size])
        off += size
    lg_all.settings  # the auto mode drops exactly those coordinates
    model2 = make_tiny_llama(len(tok))
    lg_auto = LoraGradients(model2, LoraSettings(rank=4))
    assert not lg_auto.includes_lora_a
    assert torch.allclose(lg_auto.flat(collate(enc, tok.pad_token_id)), torch.cat(b_parts, 1), rtol=1e-5, atol=1e-8)


def test_lm_head_and_embeddings_never_adapted():
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    names = block_linear_names(model)
    assert all("lm_head" not in n and "embed" not in n for n in names)
    assert len(names) == 2 * 7
    lg = LoraGradients(model, LoraSettings(rank=2))
    assert all("lm_head" not in s.name and "embed" not in s.name for s in lg.slots)
    assert all(not p.requires_grad for p in lg.peft.parameters())


def test_bf16_autocast_close_to_fp32():
    lg, tok = _randomised_lora()
    enc = [encode_record(tok, r, 64) for r in _records()[:4]]
    g32 = lg.flat(collate(enc, tok.pad_token_id))
    lg.dtype = "bfloat16"
    g16 = lg.flat(collate(enc, tok.pad_token_id))
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=1)
    assert float(cos.min()) > 0.97


def test_warmup_changes_adapter_and_enables_lora_a():
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    lg = LoraGradients(model, LoraSettings(rank=4))
    h0 = lg.adapter_hash()
    enc = [encode_record(tok, r, 64) for r in _records()[:4]]
    hist = lg.warmup([collate(enc, tok.pad_token_id)], steps=3, lr=1e-2)
    assert len(hist) == 3 and lg.adapter_hash() != h0
    assert lg.includes_lora_a
