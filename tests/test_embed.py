"""Embedding store: invariance to batch size and order, float16/float32, resume without duplicates,
bad input errors, encoder fingerprints."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_ROWS

from influcoder.data.records import DataSpec


def make_tiny_encoder(d: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny random BERT + mean pooling + Normalize saved as a sentence-transformers folder (no downloads)."""
    import warnings

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as M

    d = Path(d)
    raw = d.parent / (d.name + "-raw")
    raw.mkdir(parents=True, exist_ok=True)
    chars = [c for c in dict.fromkeys(string.printable) if not c.isspace()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # vocab= (a dict): under transformers 5, vocab_file= is ignored and every token came out [UNK]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False)
    assert tok.convert_ids_to_tokens(tok("ab 7", add_special_tokens=False)["input_ids"]) == ["a", "##b", "7"]
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=512, initializer_range=0.5)
    BertModel(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    st = SentenceTransformer(modules=[M.Transformer(str(raw), max_seq_length=256), M.Pooling(hidden, "mean"), M.Normalize()],
                             device="cpu")
    st.save(str(d))
    return d


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "rain", "code", "python", "list", "sum", "cat", "dog", "paris", "prime"]
    rows = []
    for i in range(n):
        p = " ".join(rng.choice(words, size=int(rng.integers(1, 12))))
        r = " ".join(rng.choice(words, size=int(rng.integers(1, 30))))
        rows.append({"id": f"r{i}", "prompt": p, "response": r, "extra": i})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-encoder")


@pytest.fixture(scope="session")
def other_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc2") / "other-encoder", seed=1)


@pytest.fixture
def pool_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", make_rows(57))


def reference_embeddings(encoder_dir, rows, side="pool"):
    """Slow obviously-correct reference: each text encoded alone (batch size 1, no padding)."""
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.data.records import Record

    enc = InfluenceEncoder.from_pretrained(str(encoder_dir))
    recs = [Record(r["id"], r["prompt"], r["response"]) for r in rows]
    return np.concatenate([enc.encode([r], batch_size=1, side=side) for r in recs])


def test_embeddings_match_one_by_one_reference_for_any_batch_size_and_order(tmp_path, tiny_encoder):
    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings

    rows = make_rows(57)
    ref = reference_embeddings(tiny_encoder, rows)
    shuffled = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
    results = {}
    for name, rs, bs, shard in [("b1", rows, 1, 100), ("b7", rows, 7, 10), ("b64", rows, 64, 4096), ("shuf", shuffled, 5, 13)]:
        f = write_jsonl(tmp_path / f"{name}.jsonl", rs)
        s = open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(f), str(tmp_path / name), batch_size=bs,
                                                   shard_size=shard, dtype="float32"), progress=False))
        assert s.ids == [r["id"] for r in rs]
        assert s.manifest["complete"] and s.manifest["n"] == 57
        emb = dict(zip(s.ids, s.matrix()))
        results[name] = np.stack([emb[r["id"]] for r in rows])
    for name, m in results.items():
        np.testing.assert_allclose(m, ref, atol=2e-5, err_msg=name)


def test_float16_default_close_to_float32_and_half_the_bytes(tmp_path, tiny_encoder, pool_file):
    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings

    s16 = open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "h")), progress=False))
    s32 = open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "f"), dtype="float32"),
                                     progress=False))
    assert s16.shards[0].dtype == np.float16 and s32.shards[0].dtype == np.float32
    np.testing.assert_allclose(s16.matrix(), s32.matrix(), atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(s16.matrix(), axis=1), 1.0, atol=1e-5)
    assert s16.manifest["stats"]["bytes_per_example"] < 0.6 * s32.manifest["stats"]["bytes_per_example"]


class Killed(Exception):
    pass


def test_resume_after_interruption_has_no_duplicates_and_equals_full_run(tmp_path, tiny_encoder, pool_file):
    from influcoder.search.embed import EmbedConfig, EmbeddingStoreError, embed_file, open_embeddings

    cfg = EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "s"), shard_size=10, batch_size=4)

    def die_after_two(i):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        embed_file(cfg, progress=False, on_shard=die_after_two)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert not m["complete"] and [s["index"] for s in m["shards"]] == [0, 1]
    with pytest.raises(EmbeddingStoreError, match="incomplete"):
        open_embeddings(tmp_path / "s")
    # a shard file written but never listed (killed between rename and manifest) must be ignored
    (tmp_path / "s" / "shards" / "shard-00002.npy").write_bytes(b"garbage")
    (tmp_path / "s" / "shards" / "shard-00003.npy.tmp0").write_bytes(b"half")  # a killed write
    computed = []
    embed_file(cfg, progress=False, on_shard=computed.append)
    assert computed == [2, 3, 4, 5]  # shards 0 and 1 were not recomputed
    assert not list((tmp_path / "s" / "shards").glob("*.tmp*"))
    s = open_embeddings(tmp_path / "s", verify=True)
    full = open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "full")), progress=False))
    assert s.ids == full.ids and len(set(s.ids)) == len(s.ids) == 57
    np.testing.assert_allclose(s.matrix(), full.matrix(), atol=1e-3)
    # rerunning a finished store does nothing
    embed_file(cfg, progress=False, on_shard=lambda i: pytest.fail("recomputed a finished store"))


def test_resume_refuses_other_settings_and_changed_data(tmp_path, tiny_encoder, other_encoder, pool_file):
    from influcoder.search.embed import EmbedConfig, EmbeddingStoreError, embed_file

    out = str(tmp_path / "s")
    with pytest.raises(Killed):
        embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), out, shard_size=10), progress=False,
                   on_shard=lambda i: (_ for _ in ()).throw(Killed()))
    with pytest.raises(EmbeddingStoreError, match="encoder"):
        embed_file(EmbedConfig(str(other_encoder), str(pool_file), out, shard_size=10), progress=False)
    write_jsonl(pool_file, make_rows(57, seed=9))
    with pytest.raises(EmbeddingStoreError, match="data"):
        embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), out, shard_size=10), progress=False)


@pytest.mark.parametrize("suffix", ["csv", "parquet", "json"])
def test_other_formats_stream(tmp_path, tiny_encoder, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings

    rows = [{k: v for k, v in r.items() if k != "extra"} for r in make_rows(23)]
    f = tmp_path / f"pool.{suffix}"
    if suffix == "csv":
        import csv

        with open(f, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", "prompt", "response"])
            w.writeheader()
            w.writerows(rows)
    elif suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), f)
    else:
        f.write_text(json.dumps({"examples": rows}))
    s = open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(f), str(tmp_path / "s"), shard_size=5), progress=False))
    assert s.ids == [r["id"] for r in rows] and s.rows.tolist() == list(range(23))


def test_bad_input_names_file_row_and_field(tmp_path, tiny_encoder):
    from influcoder.search.embed import EmbedConfig, embed_file
    from influcoder.data.records import RecordError

    rows = make_rows(12)
    del rows[7]["response"]
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RecordError) as e:
        embed_file(EmbedConfig(str(tiny_encoder), str(f), str(tmp_path / "s"), shard_size=4), progress=False)
    assert "bad.jsonl" in str(e.value) and "row 7" in str(e.value) and "'response'" in str(e.value)
    s = embed_file(EmbedConfig(str(tiny_encoder), DataSpec(str(f), skip_invalid=True), str(tmp_path / "s2")), progress=False)
    inv = [json.loads(l) for l in (s / "invalid.jsonl").read_text().splitlines()]
    assert inv[0]["row"] == 7 and inv[0]["field"] == "response"


def test_fingerprint_depends_on_weights_not_readme(tmp_path, tiny_encoder, other_encoder):
    import shutil

    from influcoder.student.loading import encoder_fingerprint

    a = encoder_fingerprint(tiny_encoder)["sha256"]
    assert a == encoder_fingerprint(tiny_encoder)["sha256"]
    assert a != encoder_fingerprint(other_encoder)["sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder, copy)
    (copy / "README.md").write_text("changed")
    (copy / "influcoder_encoder.json").write_text('{"note": "metadata only"}')
    assert encoder_fingerprint(copy)["sha256"] == a
    prompts = json.loads((copy / "config_sentence_transformers.json").read_text())
    prompts["prompts"] = {"query": "query: ", "pool": ""}
    (copy / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    assert encoder_fingerprint(copy)["sha256"] != a  # a prefix changes the embeddings


def test_cli_embed(tmp_path, tiny_encoder, pool_file):
    from typer.testing import CliRunner

    from influcoder.app.cli import app
    from influcoder.search.embed import open_embeddings

    r = CliRunner().invoke(app, ["embed", "--encoder", str(tiny_encoder), "--data", str(pool_file), "--out",
                                 str(tmp_path / "e"), "--float32", "--quiet"])
    assert r.exit_code == 0, r.output
    s = open_embeddings(tmp_path / "e")
    assert len(s) == 57 and s.manifest["dtype"] == "float32"
    r = CliRunner().invoke(app, ["embed", "--encoder", str(tiny_encoder), "--data", str(tmp_path / "missing.jsonl"),
                                 "--out", str(tmp_path / "e2")])
    assert r.exit_code != 0


def test_store_is_the_shared_sharded_format_and_damage_is_named(tmp_path, tiny_encoder, pool_file):
    """The embedding store is a StoreWriter store (ids.json, rows.npy, shard-*.npy, checksummed manifest);
    a damaged shard or rows file, an older format and a non-store folder are refused with their file named."""
    from influcoder.search.embed import EmbedConfig, EmbeddingStoreError, embed_file, open_embeddings
    from influcoder.teacher.store import open_sharded

    out = embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "s"), shard_size=20), progress=False)
    s = open_embeddings(out, verify=True)
    assert json.loads((out / "ids.json").read_text()) == s.ids == [f"r{i}" for i in range(57)]
    assert s.rows.tolist() == list(range(57)) and s.manifest["dim"] == 32 and s.manifest["n"] == 57
    assert [(x["start"], x["stop"]) for x in s.manifest["shards"]] == [(0, 20), (20, 40), (40, 57)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    _, ids, mat = open_sharded(out, s.manifest["format"], EmbeddingStoreError, "embedding store", "influcoder embed")
    np.testing.assert_array_equal(np.asarray(mat), np.concatenate(s.shards))
    # encoder metadata is recorded without loading the model, as loading would give it
    from influcoder.student.loading import load_encoder

    assert s.manifest["encoder_metadata"] == load_encoder(str(tiny_encoder)).metadata
    assert s.manifest["encoder"]["fingerprint"] == s.fingerprint
    # damage
    shard = out / "shards" / "shard-00001.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:-8] + b"\0" * 8)
    with pytest.raises(EmbeddingStoreError, match="shard-00001.npy: checksum mismatch"):
        open_embeddings(out, verify=True)
    shard.write_bytes(good[:-8])
    with pytest.raises(EmbeddingStoreError, match="shard-00001.npy: shard is .* bytes"):
        open_embeddings(out)
    shard.write_bytes(good)
    np.save(out / "rows.npy", np.arange(1, 58))
    with pytest.raises(EmbeddingStoreError, match="rows.npy: does not match"):
        open_embeddings(out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(m, format="influcoder-embedding-store/1")))
    with pytest.raises(EmbeddingStoreError, match="store/1.*re-embed"):
        open_embeddings(out)
    with pytest.raises(EmbeddingStoreError, match="store/1.*re-embed"):
        embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(out), shard_size=20), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddingStoreError, match="not an embedding store"):
        embed_file(EmbedConfig(str(tiny_encoder), str(pool_file), str(tmp_path / "other")), progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_encoder_identity_lives_with_the_encoder(tiny_encoder):
    """student/loading.py holds load_encoder / encoder_fingerprint / encoder_metadata; embed uses those (no copy)."""
    import influcoder.search.embed as embed
    import influcoder.student.loading as encoder

    assert embed.load_encoder is encoder.load_encoder and not hasattr(embed, "encoder_fingerprint")
    ident = encoder.encoder_identity(str(tiny_encoder))
    assert ident["fingerprint"] == encoder.encoder_fingerprint(tiny_encoder)["sha256"]
    assert ident["path"] == str(Path(tiny_encoder)) and "model.safetensors" in ident["fingerprint_files"]
    assert encoder.read_encoder_metadata(str(tiny_encoder)) == encoder.load_encoder(str(tiny_encoder)).metadata
