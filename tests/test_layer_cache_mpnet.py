"""The layer cache (layer_cache.py) on MPNet students (``mpnet-base``): a tiny random MPNet, no downloads.

MPNet differs from BERT in two ways the cache must reproduce: its mask comes from ``create_bidirectional_mask``
and every layer adds a relative attention bias computed from ``encoder.relative_attention_bias``, one
embedding shared by all layers (so freeze_lower must freeze it: the cached lower states depend on it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from influcoder.core.errors import UserError
from test_encoder import tiny_wordpiece

TEXTS = ["hello world this is a longer text than the others, about the rain on the tin roof at night " * 2,
         "hi", "paris is the capital", "2 3 5 7 11 13", "what is the colour of a blue cat?"]


def make_tiny_mpnet_dir(root: Path, seed: int = 0, layers: int = 3) -> Path:
    """A tiny random MPNet + WordPiece tokenizer (MPNet's special-token layout: <pad> = 1), saved as a
    sentence-transformers folder (Transformer → mean Pooling → Normalize), as ``mpnet-base`` is."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    from influcoder import InfluenceEncoder

    root.mkdir(parents=True, exist_ok=True)
    wp, _ = tiny_wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", "<s> $A </s>",
                           "<s> $A </s> </s> $B </s>", ("<s>", "</s>"))
    tok = MPNetTokenizerFast(tokenizer_object=wp, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                             cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    assert tok.pad_token_id == 1 and "<unk>" not in tok.tokenize("what is red\nblue dog 2+2?")
    torch.manual_seed(seed)
    cfg = MPNetConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=130, hidden_dropout_prob=0.1,
                      attention_probs_dropout_prob=0.1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = MPNetModel(cfg)
    with torch.no_grad():  # a relative bias large enough that leaving it out would show (init: std 0.02)
        model.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    st_dir = root / "st"
    InfluenceEncoder.from_pretrained(hf_dir).save(st_dir)
    return st_dir


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    return make_tiny_mpnet_dir(tmp_path_factory.mktemp("tiny-mpnet"))


def _load(d, **kw):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(d, **kw)
    enc.eval()
    return enc


def test_tiny_mpnet_is_an_mpnet_sentence_transformer(tiny_mpnet_dir):
    from transformers import MPNetModel

    from influcoder.student.layer_cache import _hf

    assert (tiny_mpnet_dir / "modules.json").exists()
    enc = _load(tiny_mpnet_dir)
    assert isinstance(_hf(enc), MPNetModel) and enc.embedding_dim == 32
    n = [len(x) for x in enc.model.tokenizer(TEXTS)["input_ids"]]
    assert max(n) > 40 and min(n) < 5  # long texts reach the far relative-position buckets; padding is real


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("side", ["pool", "query"])
def test_mpnet_layer_cache_matches_full_forward(tiny_mpnet_dir, k, side):
    """Cached path = full forward (InfluenceEncoder.embed), with padding (length-sorted cache batches of 3,
    embedded in other groupings) and a different prefix on each side."""
    from influcoder.student.layer_cache import LayerCache

    enc = _load(tiny_mpnet_dir, pool_prefix="p: ", query_prefix="query: ")
    c = LayerCache(enc, k)
    assert c.kind == "mpnet"
    c.add(side, TEXTS, side, batch_size=3)
    other = "query" if side == "pool" else "pool"
    for idx in ([3, 0, 1], [1, 2], [4], list(range(len(TEXTS)))):
        with torch.no_grad():
            ref = enc.embed([TEXTS[i] for i in idx], side=side)
            got = c.embed(side, idx)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        wrong = enc.embed([TEXTS[i] for i in (3, 0, 1)], side=other)  # the prefix matters: this can fail
        assert (wrong - c.embed(side, [3, 0, 1])).abs().max() > 1e-3


def test_mpnet_layer_cache_needs_the_position_bias(tiny_mpnet_dir, monkeypatch):
    """Negative control: without the relative attention bias in the top layers the cache would not match."""
    from influcoder.student.layer_cache import LayerCache

    enc = _load(tiny_mpnet_dir)
    c = LayerCache(enc, 1)
    c.add("pool", TEXTS, "pool")
    with torch.no_grad():
        ref = enc.embed(TEXTS, side="pool")
        monkeypatch.setattr(c.hf.encoder, "compute_position_bias", lambda h: None)
        got = c.embed("pool", range(len(TEXTS)))
    assert (got - ref).abs().max() > 1e-3


def test_mpnet_freeze_lower_freezes_embeddings_bias_and_lower_layers(tiny_mpnet_dir):
    from influcoder.student.layer_cache import _hf, encoder_layers, freeze_lower

    enc = _load(tiny_mpnet_dir)
    assert freeze_lower(enc, 0) == 3 and all(p.requires_grad for p in enc.parameters())
    assert freeze_lower(enc, 1) == 3
    hf = _hf(enc)
    layers = encoder_layers(enc)
    assert not any(p.requires_grad for p in hf.embeddings.parameters())
    assert not hf.encoder.relative_attention_bias.weight.requires_grad
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for layer in layers[1:] for p in layer.parameters())
    with pytest.raises(UserError, match="freeze_layers must be in"):
        freeze_lower(enc, 3)


def test_mpnet_gradients_through_the_cache_match_the_full_forward(tiny_mpnet_dir):
    """After freeze_lower, a loss on LayerCache.embed gives the top layers the same gradients as the full
    forward, and none reach the frozen parameters."""
    from influcoder.student.layer_cache import LayerCache, _hf, encoder_layers, freeze_lower

    idx = [0, 2, 1, 4]
    w = torch.randn(len(idx), 32, generator=torch.Generator().manual_seed(1))

    def grads(use_cache: bool):
        enc = _load(tiny_mpnet_dir, query_prefix="q: ")
        freeze_lower(enc, 2)
        if use_cache:
            c = LayerCache(enc, 2)
            c.add("query", TEXTS, "query", batch_size=2)
            e = c.embed("query", idx)
        else:
            e = enc.embed([TEXTS[i] for i in idx], side="query")
        (e * w).sum().backward()
        hf = _hf(enc)
        frozen = [*hf.embeddings.parameters(), hf.encoder.relative_attention_bias.weight,
                  *encoder_layers(enc)[0].parameters(), *encoder_layers(enc)[1].parameters()]
        assert all(p.grad is None for p in frozen)
        return {n: p.grad.clone() for n, p in encoder_layers(enc)[2].named_parameters()}

    g_cache, g_full = grads(True), grads(False)
    assert g_cache.keys() == g_full.keys() and len(g_cache) > 10
    assert all(float(g.abs().max()) > 0 for g in g_cache.values())
    for n in g_full:
        torch.testing.assert_close(g_cache[n], g_full[n], atol=1e-5, rtol=1e-4, msg=n)


def _fake_enc(hf):
    return SimpleNamespace(model=[SimpleNamespace(auto_model=hf)])


def test_unsupported_students_get_a_clear_error():
    from influcoder.student.layer_cache import encoder_layers

    no_layers = torch.nn.Module()  # e.g. DistilBERT: transformer.layer, no encoder.layer
    no_layers.config = SimpleNamespace(model_type="distilbert")
    with pytest.raises(UserError, match="no encoder.layer.*use freeze_layers 0"):
        encoder_layers(_fake_enc(no_layers))
    other = torch.nn.Module()  # encoder.layer, but neither a BERT-style model type nor MPNet's position bias
    other.encoder = torch.nn.Module()
    other.encoder.layer = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    other.config = SimpleNamespace(model_type="other")
    with pytest.raises(UserError, match="model_type 'other'.*not supported.*use freeze_layers 0"):
        encoder_layers(_fake_enc(other))
