"""Input records: formats, field mapping, chat messages, and errors that name file, row and field."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from influcoder.data.records import FieldSpec, PRESETS, RecordError, read_records
from influcoder.teacher.tokenization import encode_record, pack_by_tokens
from influcoder.data.records import Record

from conftest import make_tokenizer

ROWS = [{"id": "x1", "prompt": "Hi", "response": "Hello"}, {"prompt": "Q", "response": "A"}]


def _write(tmp_path, fmt, rows):
    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        p.write_text(json.dumps(rows))
    elif fmt == "csv":
        import csv

        keys = sorted({k for r in rows for k in r})
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), p)
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_formats_read_the_same(tmp_path, fmt):
    rows = [{"id": "x1", "prompt": "Hi", "response": "Hello"}, {"id": "", "prompt": "Q", "response": "A"}]
    recs, invalid = read_records(_write(tmp_path, fmt, rows))
    assert [(r.id, r.prompt, r.response) for r in recs] == [("x1", "Hi", "Hello"), ("1", "Q", "A")]
    assert not invalid


def test_json_object_with_one_list_and_presets(tmp_path):
    p = tmp_path / "bbh.json"
    p.write_text(json.dumps({"examples": [{"input": "1+1", "target": "2"}]}))
    recs, _ = read_records(p, PRESETS["bbh"])
    assert recs[0].prompt == "1+1" and recs[0].response == "2" and recs[0].id == "0"
    p2 = tmp_path / "alpaca.json"
    p2.write_text(json.dumps([{"instruction": "Do", "input": "", "output": "Done"}, {"instruction": "Sum", "input": "1 2", "output": "3"}]))
    recs, _ = read_records(p2, PRESETS["alpaca"])
    assert recs[0].prompt == "Do" and recs[1].prompt == "Sum\n\n1 2"


def test_custom_field_names(tmp_path):
    p = _write(tmp_path, "jsonl", [{"q": "a", "extra": "b", "ans": "c", "key": "k"}])
    recs, _ = read_records(p, FieldSpec.from_names(prompt="q,extra", response="ans", id="key"))
    assert (recs[0].id, recs[0].prompt, recs[0].response) == ("k", "a\n\nb", "c")


def test_messages_last_assistant_turn_is_response(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "final"}]
    p = _write(tmp_path, "jsonl", [{"messages": msgs}])
    rec = read_records(p)[0][0]
    assert rec.response == "final" and rec.messages[-1]["content"] == "final" and len(rec.messages) == 4
    tok = make_tokenizer()
    enc = encode_record(tok, rec, 512)
    text = tok.decode(enc.ids[enc.prompt_len:]).replace(" ", "")  # the char-level test tokenizer decodes with spaces
    assert text.startswith("final") and "again" in tok.decode(enc.ids[: enc.prompt_len]).replace(" ", "")


@pytest.mark.parametrize(
    "row,field,problem",
    [
        ({"prompt": "p"}, "response", "missing"),
        ({"prompt": "p", "response": 3}, "response", "expected a string"),
        ({"prompt": "p", "response": "   "}, "response", "empty response"),
        ({"response": "r"}, "prompt", "missing"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "no assistant turn"),
        ({"messages": "not json"}, "messages", "expected a list"),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path, row, field, problem):
    p = _write(tmp_path, "jsonl", [{"prompt": "ok", "response": "fine"}, row])
    with pytest.raises(RecordError) as e:
        read_records(p)
    assert e.value.row == 1 and e.value.field == field and problem in str(e.value)
    assert str(p) in str(e.value) and "row 1" in str(e.value) and f"field '{field}'" in str(e.value)
    recs, invalid = read_records(p, skip_invalid=True)
    assert len(recs) == 1 and invalid[0].row == 1 and invalid[0].field == field


def test_unreadable_files(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(RecordError, match="row 1.*invalid JSON"):
        read_records(bad)
    odd = tmp_path / "x.txt"
    odd.write_text("hi")
    with pytest.raises(RecordError, match="unsupported file type"):
        read_records(odd)
    dup = _write(tmp_path, "jsonl", [{"id": "a", "prompt": "p", "response": "r"}, {"id": "a", "prompt": "p", "response": "r"}])
    with pytest.raises(RecordError, match="duplicate id"):
        read_records(dup)


def test_truncation_keeps_response_and_cuts_prompt_from_the_left():
    tok = make_tokenizer(chat_template=False)
    rec = Record("0", "abcdefghij" * 5, "XYZ", row=0)
    full = encode_record(tok, rec, 512)
    enc = encode_record(tok, rec, 12)
    assert len(enc) == 12
    assert enc.ids[enc.prompt_len:] == full.ids[full.prompt_len:]  # response (+EOS) intact
    assert enc.ids[: enc.prompt_len] == full.ids[full.prompt_len - enc.prompt_len : full.prompt_len]  # left cut
    tiny = encode_record(tok, Record("1", "prompt", "a long response", row=0), 4)
    assert tiny.prompt_len == 1 and tiny.n_response == 3 and tiny.truncated_response_tokens > 0


def test_plain_concatenation_without_template():
    tok = make_tokenizer(chat_template=False)
    enc = encode_record(tok, Record("0", "Q?", "A.", row=0), 64)
    assert tok.decode(enc.ids[: enc.prompt_len]).replace(" ", "") == "Q?"
    assert enc.ids[-1] == tok.eos_token_id and tok.decode(enc.ids[enc.prompt_len : -1]).replace(" ", "") == "A."


def test_pack_by_tokens_is_deterministic_and_bounded():
    lengths = [5, 50, 7, 49, 3, 20, 20, 1]
    batches = pack_by_tokens(lengths, max_examples=3, token_budget=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100)
    assert batches == pack_by_tokens(lengths, max_examples=3, token_budget=100)


def test_saved_datasets_folder_is_read_row_by_row(tmp_path):
    """A folder written by datasets.Dataset.save_to_disk (state.json + Arrow stream files): read with
    datasets.load_from_disk when installed, else straight from the Arrow files; fingerprinted as data."""
    import json

    import pyarrow as pa

    from influcoder.data.records import FieldSpec, file_fingerprint, read_records

    d = tmp_path / "ds"
    d.mkdir()
    table = pa.table({"instruction": ["add 1+1", "name a colour", "say hi"], "input": ["", "", ""],
                      "output": ["2", "blue", "hi"]})
    for name, part in (("data-00000-of-00002.arrow", table.slice(0, 2)), ("data-00001-of-00002.arrow", table.slice(2))):
        with pa.OSFile(str(d / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00002.arrow"},
                                                             {"filename": "data-00001-of-00002.arrow"}]}))
    (d / "dataset_info.json").write_text("{}")
    recs, _ = read_records(d, FieldSpec.from_names(preset="alpaca"))
    assert [(r.id, r.prompt, r.response) for r in recs] == [("0", "add 1+1", "2"), ("1", "name a colour", "blue"), ("2", "say hi", "hi")]
    fp = file_fingerprint(d)
    assert len(fp["sha256"]) == 64 and fp["bytes"] > 0
