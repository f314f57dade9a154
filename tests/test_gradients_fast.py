"""The stocking fast paths against their plain-autograd counterparts.

* the fused LoRA autograd function vs peft's own forward with hooks (``fused=False``),
* the chunked LM-head cross-entropy vs ``F.cross_entropy`` on full logits (values and ∂/∂h),
* dropping the attention mask for right padding vs keeping it.
The end-to-end reference (one backward per example through peft) is in tests/test_gradients.py.
"""

from __future__ import annotations

import pytest
import torch

from influcoder.teacher.gradients import LoraGradients, LoraSettings, _right_padded, per_example_losses
from influcoder.data.records import Record
from influcoder.teacher.tokenization import collate, encode_record

from conftest import SAMPLE_ROWS, make_tiny_llama, make_tokenizer


def _records():
    return [Record(r["id"], r["prompt"], r["response"], row=i) for i, r in enumerate(SAMPLE_ROWS)]


def _pair(randomise: bool, include_a: str):
    """Two LoraGradients over identical tiny models and adapters: fused and hook-based."""
    tok = make_tokenizer()
    out = []
    for fused in (True, False):
        lg = LoraGradients(make_tiny_llama(len(tok)), LoraSettings(rank=4, alpha=8, include_lora_a=include_a),
                           fused=fused, lm_head_chunk=5 if fused else None)
        if randomise:
            g = torch.Generator().manual_seed(7)
            for _, p in lg.lora_parameters():
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            lg._build_slots()
        out.append(lg)
    return out, tok


@pytest.mark.parametrize("randomise,include_a", [(True, "yes"), (False, "auto"), (False, "yes")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_equals_hooked_peft(randomise, include_a, side):
    (fast, slow), tok = _pair(randomise, include_a)
    assert len(fast._fused) == 14 and not fast._handles
    assert not slow._fused and len(slow._handles) == len(slow.slots)
    enc = [encode_record(tok, r, 48) for r in _records()[:6]]
    batch = collate(enc, tok.pad_token_id, side)
    gf, lf = fast.pieces(batch)
    gs, ls = slow.pieces(batch)
    assert [p.shape for p in gf] == [p.shape for p in gs]
    a, b = torch.cat(gf, 1), torch.cat(gs, 1)
    assert b.abs().sum() > 0
    err = ((a - b).norm(dim=1) / b.norm(dim=1)).max()
    assert float(err) <= 1e-5
    torch.testing.assert_close(lf, ls, rtol=1e-6, atol=1e-6)
    if include_a == "yes" and not randomise:  # fresh adapter: A gradients exactly zero on the fast path too
        for s, p in zip(fast.slots, gf):
            if s.name.endswith("lora_A"):
                assert float(p.abs().max()) == 0.0


def test_fused_forward_is_restored_and_model_unchanged():
    (fast, _), tok = _pair(True, "yes")
    enc = [encode_record(tok, r, 48) for r in _records()[:3]]
    batch = collate(enc, tok.pad_token_id)
    before = fast.losses(batch, track=False)
    fast.pieces(batch)
    assert all("forward" not in m.__dict__ for m in fast._fused.values())
    torch.testing.assert_close(fast.losses(batch, track=False), before, rtol=0, atol=0)


def test_fused_bf16_close_to_hooked_bf16():
    (fast, slow), tok = _pair(True, "yes")
    fast.dtype = slow.dtype = "bfloat16"
    enc = [encode_record(tok, r, 48) for r in _records()[:4]]
    batch = collate(enc, tok.pad_token_id)
    a, b = fast.flat(batch), slow.flat(batch)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.min()) > 0.99


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_lm_head_ce_equals_full_logits(chunk):
    torch.manual_seed(0)
    vocab, d = 50, 16
    head = torch.nn.Linear(d, vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(3, 9, d)
    labels = torch.randint(0, vocab, (3, 9))
    labels[0, :4] = -100
    labels[1, :2] = -100
    labels[2, 7:] = -100
    out = []
    for c in (chunk, None):
        h = hidden.clone().requires_grad_(True)
        loss = per_example_losses(h, labels, head, chunk=c)
        (loss * torch.tensor([1.0, 2.0, -0.5])).sum().backward()
        out.append((loss.detach(), h.grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-5, atol=1e-7)


def test_trainable_lm_head_uses_plain_autograd():
    head = torch.nn.Linear(8, 20, bias=False)
    labels = torch.randint(0, 20, (2, 4))
    per_example_losses(torch.randn(2, 4, 8), labels, head, chunk=2).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_chunked_ce_bf16_autocast_close():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 6, 16)
    labels = torch.randint(0, 40, (2, 6))
    res = []
    for c in (2, None):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = per_example_losses(h, labels, head, chunk=c)
        loss.sum().backward()
        res.append((loss.detach(), h.grad))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=2e-2, atol=2e-2)
    cos = torch.nn.functional.cosine_similarity(res[0][1].flatten(), res[1][1].flatten(), dim=0)
    assert float(cos) > 0.99


def test_no_response_token_still_an_error():
    head = torch.nn.Linear(4, 10, bias=False)
    labels = torch.full((2, 5), -100)
    labels[0, 3] = 1
    with pytest.raises(ValueError, match="no response token"):
        per_example_losses(torch.randn(2, 5, 4), labels, head)


def test_right_padding_detection():
    assert _right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert not _right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert not _right_padded(torch.tensor([[1, 0, 1]]))
