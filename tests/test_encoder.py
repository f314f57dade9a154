"""InfluenceEncoder: encoding, prefixes, invariances, save/load and sentence-transformers compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from influcoder.data.records import Record, record_to_text

WORDS = ("the a an is of to and in what how why name list write explain say colour capital paris blue cat dog "
         "rain roof night prime number water wet gravity mass reverse hello world true false yes no").split()


def tiny_wordpiece(specials: list[str], unk: str, single: str, pair: str, ends: tuple[str, str]):
    """A WordPiece tokenizer over WORDS and single characters (no downloads): ``specials`` first (their ids
    0, 1, ...), ``single`` / ``pair`` the post-processing templates, ``ends`` the two tokens they insert.
    Returns the ``tokenizers.Tokenizer`` and its vocabulary."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    chars = [c for c in dict.fromkeys(string.printable) if not c.isspace()]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + chars + ["##" + c for c in chars] + WORDS))}
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                      special_tokens=[(t, vocab[t]) for t in ends])
    return wp, vocab


def make_tiny_bert_dir(root: Path, seed: int = 0) -> Path:
    """A tiny random BERT + WordPiece tokenizer saved as a plain HF folder (no downloads)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    wp, _ = tiny_wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", "[CLS] $A [SEP]",
                           "[CLS] $A [SEP] $B [SEP]", ("[CLS]", "[SEP]"))
    tok = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    assert "[UNK]" not in tok.tokenize("what is red\nblue dog 2+2?")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    BertModel(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert"))


TEXTS = ["What is 2+2?\n4, obviously.", "Say hi\nHi!", "Explain gravity in one line.\nMass attracts mass.",
         "a", "Write a haiku about rain on a tin roof at night. " * 3]


def test_lazy_export():
    import influcoder

    assert influcoder.InfluenceEncoder.__name__ == "InfluenceEncoder"
    from influcoder import InfluenceEncoder  # noqa: F401


def test_encode_normalised_float32(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    e = enc.encode(TEXTS)
    assert e.dtype == np.float32 and e.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert enc.encode("a").shape == (1, 32)
    assert enc.encode([]).shape == (0, 32)
    # distinct texts give distinct embeddings (not a constant model)
    assert np.abs(e[0] - e[1]).max() > 1e-4


def test_encode_invariant_to_batch_size_and_order(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    a = enc.encode(TEXTS, batch_size=1)
    b = enc.encode(TEXTS, batch_size=8)
    c = enc.encode(TEXTS[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_mean_pooling_matches_reference(tiny_bert_dir):
    """Slow obviously-correct reference: raw HF model, masked mean of the last hidden state, L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ref = []
    for t in TEXTS:
        x = tok(t, return_tensors="pt", truncation=True, max_length=enc.max_length)
        with torch.no_grad():
            h = model(**x).last_hidden_state[0]
        v = h.mean(0).numpy()
        ref.append(v / np.linalg.norm(v))
    np.testing.assert_allclose(enc.encode(TEXTS), np.stack(ref), atol=1e-5)


def test_records_are_prompt_plus_response(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    recs = [Record(id="x", prompt="Say hi", response="Hi!"), Record(id="y", prompt="", response="cat")]
    np.testing.assert_allclose(enc.encode(recs), enc.encode([record_to_text(r) for r in recs]), atol=1e-6)
    assert record_to_text(recs[0]) == "Say hi\nHi!"
    with pytest.raises(TypeError, match="item 0"):
        enc.encode([3])


def test_embed_matches_encode_and_has_grad(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, query_prefix="query: ")
    enc.eval()
    t = enc.embed(TEXTS, side="query")
    assert t.requires_grad
    np.testing.assert_allclose(t.detach().numpy(), enc.encode(TEXTS, side="query"), atol=1e-5)


def test_prefix_per_side(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, query_prefix="query: ")
    plain = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    np.testing.assert_allclose(enc.encode(TEXTS, side="pool"), plain.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(enc.encode(TEXTS, side="query"), plain.encode(["query: " + t for t in TEXTS]), atol=1e-5)
    assert np.abs(enc.encode(TEXTS, side="query") - enc.encode(TEXTS, side="pool")).max() > 1e-4
    with pytest.raises(ValueError, match="side"):
        enc.encode(TEXTS, side="both")


def test_similarity_is_cosine(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0]])
    np.testing.assert_allclose(InfluenceEncoder.similarity(a, b), [[0.8], [0.0]], atol=1e-6)
    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    e = enc.encode(TEXTS)
    np.testing.assert_allclose(enc.similarity(e, e).diagonal(), 1.0, atol=1e-5)


def test_projection_head(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, projection_dim=8)
    e = enc.encode(TEXTS)
    assert e.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_save_load_and_sentence_transformers_roundtrip(tiny_bert_dir, tmp_path, projection_dim):
    from sentence_transformers import SentenceTransformer

    from influcoder import InfluenceEncoder
    from influcoder.student.encoder import METADATA_FILE

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, projection_dim=projection_dim, query_prefix="q: ")
    out = enc.save(tmp_path / "enc", {"teacher": {"decoder": "x"}, "validation": {"per_anchor_spearman": 0.1}})
    assert json.loads((out / METADATA_FILE).read_text())["teacher"]["decoder"] == "x"
    back = InfluenceEncoder.from_pretrained(out)
    assert back.metadata["validation"]["per_anchor_spearman"] == 0.1
    np.testing.assert_allclose(back.encode(TEXTS), enc.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(back.encode(TEXTS, side="query"), enc.encode(TEXTS, side="query"), atol=1e-6)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), enc.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="query"), enc.encode(TEXTS, side="query"), atol=1e-6)
    # saving again over the folder keeps foreign files and replaces the model
    (out / "metrics.jsonl").write_text("{}\n")
    enc.save(out)
    assert (out / "metrics.jsonl").exists() and not list(tmp_path.glob(".enc.*"))


def test_unknown_encoder_is_clear_error(tmp_path):
    from influcoder import InfluenceEncoder
    from influcoder.core.errors import UserError

    with pytest.raises(UserError, match="Cannot load encoder"):
        InfluenceEncoder.from_pretrained(tmp_path / "nope")


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from influcoder import InfluenceEncoder
    from influcoder.core.models import ModelNotAvailable, resolve_encoder

    try:
        path = resolve_encoder("minilm-l6")
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    enc = InfluenceEncoder.from_pretrained("minilm-l6")
    ref = SentenceTransformer(path, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(enc.encode(TEXTS), ref, atol=1e-5)
    out = enc.save(tmp_path / "m")
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode(TEXTS), ref, atol=1e-5)
    e = enc.encode(TEXTS)
    assert enc.similarity(e[:1], e[1:]).shape == (1, len(TEXTS) - 1)


# ------------------------------------------------------------------------------------------ dict rows, wrappers
def test_encode_accepts_dict_rows_like_the_cli(tiny_bert_dir, tmp_path):
    from influcoder import InfluenceEncoder
    from influcoder.data.records import RecordError, read_records

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, query_prefix="q: ")
    rows = [{"id": "a", "prompt": "Say hi", "response": "Hi!"},
            {"messages": [{"role": "user", "content": "name a dog"}, {"role": "assistant", "content": "rex"}]}]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs, _ = read_records(f)  # what `influcoder embed --data rows.jsonl` embeds
    np.testing.assert_allclose(enc.encode(rows), enc.encode(recs), atol=1e-6)
    np.testing.assert_allclose(enc.encode(rows), enc.encode([record_to_text(r) for r in recs]), atol=1e-6)
    one = enc.encode(rows[0])  # a single dict is one row, not its keys
    assert one.shape == (1, enc.dim)
    np.testing.assert_allclose(one[0], enc.encode(recs)[0], atol=1e-6)
    assert not np.allclose(one, enc.encode(["prompt"]), atol=1e-3)
    np.testing.assert_allclose(enc.encode_query(rows), enc.encode(rows, side="query"), atol=1e-6)
    np.testing.assert_allclose(enc.encode_document(rows), enc.encode(rows, side="pool"), atol=1e-6)
    with pytest.raises(RecordError, match=r"row 0, field 'response': missing"):
        enc.encode({"prompt": "no response"})
    for bad in (3, None, b"bytes", [1.5]):
        with pytest.raises(TypeError, match="expected a str, a Record"):
            enc.encode(bad)


def test_saved_encoder_has_the_document_prompt(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, pool_prefix="doc: ", query_prefix="q: ")
    out = enc.save(tmp_path / "enc")
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts["document"] == "doc: " and st.prompts["pool"] == "doc: " and st.prompts["query"] == "q: "
    texts = ["red cat", "blue dog"]
    np.testing.assert_allclose(st.encode_document(texts), enc.encode_document(texts), atol=1e-6)
    np.testing.assert_allclose(st.encode_query(texts), enc.encode_query(texts), atol=1e-6)
    assert not np.allclose(st.encode_document(texts), st.encode(texts), atol=1e-4)  # the prompt is used
