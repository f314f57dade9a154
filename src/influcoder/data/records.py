"""Input records: reading JSONL / JSON / CSV / Parquet files into validated (prompt, response) records.

This is the first stage of the pipeline. Every later stage (stocking, distillation, embedding,
filtering) reads its data through :func:`read_records` or :func:`iter_records`, so a record means
the same thing everywhere.

A record is either
  * a ``prompt`` and a ``response`` (field names configurable; the prompt may be joined from several
    fields, e.g. Alpaca's ``instruction`` + ``input``), or
  * a chat-style ``messages`` list of ``{"role", "content"}`` turns whose last assistant turn is the
    response and everything before it the prompt.

Bad input raises :class:`RecordError`, whose message names the file, the (0-based) row and the field.
With ``skip_invalid=True`` bad rows are collected in a report instead and never reach the model.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UserError
from ..core.fileio import sha256_file

__all__ = [
    "write_records",
    "record_key",
    "DataSpec",
    "FieldSpec",
    "PRESETS",
    "Record",
    "RecordError",
    "InvalidRow",
    "iter_rows",
    "iter_records",
    "read_records",
    "file_fingerprint",
    "record_to_text",
]

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz")


class RecordError(UserError, ValueError):
    """An input row that cannot become a record. The message names file, row and field."""

    def __init__(self, path: str | Path, row: int | None, field_name: str | None, problem: str):
        self.path = str(path)
        self.row = row
        self.field = field_name
        self.problem = problem
        where = f"{self.path}"
        if row is not None:
            where += f", row {row}"
        if field_name is not None:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class FieldSpec:
    """Which fields of a row hold the prompt, the response, the chat messages and the id."""

    prompt: tuple[str, ...] = ("prompt",)
    """Field(s) joined (non-empty ones, separated by ``prompt_separator``) into the prompt."""
    response: str = "response"
    """Field holding the response (the only tokens that carry loss)."""
    messages: str = "messages"
    """Field holding a chat-style list of turns; used when present in a row."""
    id: str = "id"
    """Optional id field; the row number is used when it is absent."""
    prompt_separator: str = "\n\n"
    """Separator between several prompt fields."""

    @classmethod
    def from_names(
        cls,
        prompt: str | None = None,
        response: str | None = None,
        messages: str | None = None,
        id: str | None = None,
        preset: str | None = None,
    ) -> "FieldSpec":
        """Build a spec from CLI-style names (``prompt`` may be ``"a,b"``); explicit names beat the preset."""
        if preset and preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
        base = PRESETS[preset] if preset else cls()
        return cls(
            prompt=tuple(p.strip() for p in prompt.split(",") if p.strip()) if prompt else base.prompt,
            response=response or base.response,
            messages=messages or base.messages,
            id=id or base.id,
            prompt_separator=base.prompt_separator,
        )


@dataclass
class DataSpec:
    """A records file and how to read it: the one data spec used wherever a run reads records."""

    path: str = ""
    """Records file (.jsonl/.json/.csv/.parquet, optionally .gz) or a saved Hugging Face datasets folder."""
    preset: str | None = None
    """Named field mapping: alpaca, dolly, bbh, gsm8k, xstest-completions, prompt-response."""
    prompt_field: str | None = None
    """Prompt field(s), comma-separated to join several (beats the preset; default: prompt)."""
    response_field: str | None = None
    """Response field (beats the preset; default: response)."""
    messages_field: str | None = None
    """Chat-style messages field (default: messages)."""
    id_field: str | None = None
    """Id field (default: id; the row number when absent)."""
    limit: int | None = None
    """Use only the first N valid records."""
    skip_invalid: bool = False
    """Skip bad rows instead of stopping at the first."""

    def __post_init__(self):
        if self.preset and self.preset not in PRESETS:
            raise UserError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be ≥ 1, got {self.limit}")

    @classmethod
    def of(cls, value: "DataSpec | str | Path | dict | None") -> "DataSpec":
        """A DataSpec from a spec, a path alone (read with the default fields), a mapping of its fields, or None
        (no file: an empty path)."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, dict):
            return cls(**value)
        return cls(path=str(value))

    def field_spec(self) -> "FieldSpec":
        """The :class:`FieldSpec` this spec reads rows with."""
        return FieldSpec.from_names(self.prompt_field, self.response_field, self.messages_field, self.id_field, self.preset)

    def read(self) -> tuple[list["Record"], list["InvalidRow"]]:
        """All records (up to ``limit``), with the rows skipped under ``skip_invalid``."""
        if not self.path:
            raise UserError("no data file given (path is empty)")
        return read_records(self.path, self.field_spec(), skip_invalid=self.skip_invalid, limit=self.limit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_field_spec(cls, path: str, spec: "FieldSpec", **kw) -> "DataSpec":
        """The spec of ``path`` read with an explicit :class:`FieldSpec` (fields written out, no preset)."""
        return cls(path=str(path), prompt_field=",".join(spec.prompt), response_field=spec.response,
                   messages_field=spec.messages, id_field=spec.id, **kw)


PRESETS: dict[str, FieldSpec] = {
    "prompt-response": FieldSpec(),
    "alpaca": FieldSpec(prompt=("instruction", "input"), response="output"),
    "dolly": FieldSpec(prompt=("instruction", "context"), response="response"),
    "bbh": FieldSpec(prompt=("input",), response="target"),
    "gsm8k": FieldSpec(prompt=("question",), response="answer"),
    "xstest-completions": FieldSpec(prompt=("prompt",), response="completion"),
}


@dataclass
class Record:
    """One training or query example."""

    id: str
    prompt: str
    response: str
    messages: list[dict[str, str]] | None = None
    """The chat turns when the row was chat-style (the last assistant turn is ``response``)."""
    row: int = -1
    """0-based row in the source file (for error messages)."""
    source: str = ""
    """File the record came from."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other fields of the row, kept so outputs can be written back in the original format."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InvalidRow:
    """A row skipped under ``skip_invalid`` with the reason."""

    path: str
    row: int
    field: str | None
    problem: str


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in SUPPORTED_SUFFIXES:
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, "r", encoding="utf-8", newline="")


def is_datasets_folder(path: str | Path) -> bool:
    """A folder written by Hugging Face ``datasets.Dataset.save_to_disk`` (``state.json`` + Arrow files)."""
    p = Path(path)
    return p.is_dir() and (p / "state.json").is_file() and (p / "dataset_info.json").is_file()


def _datasets_files(path: Path) -> list[Path]:
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RecordError(path, None, None, f"unreadable datasets folder state.json ({e})") from None
    return files


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """sha256, size and name of a data file: recorded in manifests so stores can be matched to data.
    A saved ``datasets`` folder is hashed over its state.json and Arrow files, in order."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, None, "file not found")
    if is_datasets_folder(path):
        import hashlib

        h = hashlib.sha256()
        files = [path / "state.json"] + _datasets_files(path)
        for f in files:
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
        return {"path": str(path), "name": path.name, "bytes": sum(f.stat().st_size for f in files), "sha256": h.hexdigest()}
    return {"path": str(path), "name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _iter_datasets_folder(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a saved ``datasets`` folder: through ``datasets.load_from_disk`` when the package is
    installed, else straight from its Arrow stream files with pyarrow (the same bytes)."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        datasets = None
    if datasets is not None:
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types
            raise RecordError(path, None, None, f"unreadable datasets folder ({e})") from None
        if not hasattr(ds, "__getitem__") or isinstance(ds, dict):
            raise RecordError(path, None, None, "a DatasetDict: give the folder of one split (e.g. PATH/train)")
        for i, row in enumerate(ds):
            yield i, dict(row)
        return
    import pyarrow as pa

    i = 0
    for f in _datasets_files(path):
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(f)))
        except (pa.ArrowInvalid, OSError) as e:
            raise RecordError(f, None, None, f"unreadable Arrow file ({e})") from None
        for batch in reader:
            for obj in batch.to_pylist():
                yield i, obj
                i += 1


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_index, row_dict)`` from a data file, streaming where the format allows.

    JSONL, CSV and Parquet are streamed; JSON is a list of objects, or an object with exactly one
    list-valued key (e.g. BBH's ``{"examples": [...]}``), and is read whole. A folder written by
    ``datasets.Dataset.save_to_disk`` is read row by row.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, None, "file not found")
    if is_datasets_folder(path):
        yield from _iter_datasets_folder(path)
        return
    if path.is_dir():
        raise RecordError(path, None, None, "is a folder, expected a .jsonl/.json/.csv/.parquet file "
                          "or a saved Hugging Face datasets folder (save_to_disk)")
    suf = _suffix(path)
    try:
        if suf in (".jsonl", ".jsonl.gz"):
            with _open_text(path) as f:
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise RecordError(path, i, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
                    if not isinstance(obj, dict):
                        raise RecordError(path, i, None, f"expected a JSON object, got {type(obj).__name__}")
                    yield i, obj
        elif suf in (".json", ".json.gz"):
            with _open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise RecordError(path, None, None, f"invalid JSON ({e.msg} at line {e.lineno})") from None
            if isinstance(data, dict):
                lists = [k for k, v in data.items() if isinstance(v, list)]
                if len(lists) != 1:
                    raise RecordError(
                        path, None, None, "a JSON object must hold exactly one list of rows (found keys: "
                        + ", ".join(map(str, data.keys()))[:200] + ")"
                    )
                data = data[lists[0]]
            if not isinstance(data, list):
                raise RecordError(path, None, None, "expected a JSON list of objects")
            for i, obj in enumerate(data):
                if not isinstance(obj, dict):
                    raise RecordError(path, i, None, f"expected a JSON object, got {type(obj).__name__}")
                yield i, obj
        elif suf in (".csv", ".csv.gz"):
            with _open_text(path) as f:
                reader = csv.DictReader(f)
                for i, obj in enumerate(reader):
                    if None in obj:  # more cells than header columns
                        raise RecordError(path, i, None, "row has more cells than the header")
                    yield i, dict(obj)
        elif suf == ".parquet":
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise RecordError(path, None, None, f"unreadable Parquet file ({e})") from None
            i = 0
            for batch in pf.iter_batches(batch_size=1024):
                for obj in batch.to_pylist():
                    yield i, obj
                    i += 1
        else:
            raise RecordError(
                path, None, None, f"unsupported file type '{suf}' (use .jsonl, .json, .csv or .parquet)"
            )
    except UnicodeDecodeError as e:
        raise RecordError(path, None, None, f"not UTF-8 text ({e.reason})") from None
    except (OSError, gzip.BadGzipFile) as e:
        raise RecordError(path, None, None, f"unreadable ({e})") from None


def _string_field(path: Path, row: int, obj: dict, name: str, *, required: bool) -> str | None:
    if name not in obj or obj[name] is None:
        if required:
            present = ", ".join(sorted(map(str, obj.keys())))[:200]
            raise RecordError(path, row, name, f"missing (row has fields: {present})")
        return None
    value = obj[name]
    if not isinstance(value, str):
        raise RecordError(path, row, name, f"expected a string, got {type(value).__name__}")
    return value


def _parse_messages(path: Path, row: int, name: str, value: Any) -> tuple[list[dict[str, str]], str]:
    if isinstance(value, str):  # CSV / Parquet may hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError(path, row, name, "expected a list of {role, content} turns") from None
    if not isinstance(value, list) or not value:
        raise RecordError(path, row, name, "expected a non-empty list of {role, content} turns")
    turns: list[dict[str, str]] = []
    for j, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(
            turn.get("content"), str
        ):
            raise RecordError(path, row, f"{name}[{j}]", "each turn needs string 'role' and 'content'")
        turns.append({"role": turn["role"], "content": turn["content"]})
    last_assistant = max((j for j, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last_assistant is None:
        raise RecordError(path, row, name, "no assistant turn: the last assistant turn is the response")
    if last_assistant == 0:
        raise RecordError(path, row, name, "the assistant turn has no prompt turn before it")
    turns = turns[: last_assistant + 1]
    return turns, turns[-1]["content"]


def row_to_record(path: Path, row: int, obj: dict, spec: FieldSpec) -> Record:
    rid = obj.get(spec.id)
    rid = str(row) if rid is None or rid == "" else str(rid)
    used = {spec.id}
    if spec.messages in obj and obj[spec.messages] is not None and spec.response not in obj:
        turns, response = _parse_messages(path, row, spec.messages, obj[spec.messages])
        if not response.strip():
            raise RecordError(path, row, spec.messages, "empty response (last assistant turn)")
        prompt = "\n\n".join(t["content"] for t in turns[:-1])
        used.add(spec.messages)
        extra = {k: v for k, v in obj.items() if k not in used}
        return Record(rid, prompt, response, turns, row, str(path), extra)
    parts = []
    for name in spec.prompt:
        # with several prompt fields, later ones (e.g. Alpaca's "input") may be missing or empty
        value = _string_field(path, row, obj, name, required=(name == spec.prompt[0]))
        if value is not None and value.strip():
            parts.append(value)
        used.add(name)
    response = _string_field(path, row, obj, spec.response, required=True)
    assert response is not None
    if not response.strip():
        raise RecordError(path, row, spec.response, "empty response")
    used.add(spec.response)
    extra = {k: v for k, v in obj.items() if k not in used}
    return Record(rid, spec.prompt_separator.join(parts), response, None, row, str(path), extra)


def iter_records(
    path: str | Path,
    spec: FieldSpec | None = None,
    *,
    skip_invalid: bool = False,
    invalid: list[InvalidRow] | None = None,
) -> Iterator[Record]:
    """Stream validated records from ``path``.

    Raises :class:`RecordError` on the first bad row, unless ``skip_invalid`` is set, in which case the
    bad row is appended to ``invalid`` (if given) and skipped. Duplicate ids are always an error.
    """
    spec = spec or FieldSpec()
    path = Path(path)
    seen: set[str] = set()
    for row, obj in iter_rows(path):
        try:
            rec = row_to_record(path, row, obj, spec)
            if rec.id in seen:
                raise RecordError(path, row, spec.id, f"duplicate id '{rec.id}'")
        except RecordError as e:
            if not skip_invalid:
                raise
            if invalid is not None:
                invalid.append(InvalidRow(str(path), row, e.field, e.problem))
            continue
        seen.add(rec.id)
        yield rec


def read_records(
    path: str | Path,
    spec: FieldSpec | None = None,
    *,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> tuple[list[Record], list[InvalidRow]]:
    """Read all records of a file. Returns ``(records, invalid_rows)``; raises on bad input by default."""
    invalid: list[InvalidRow] = []
    out: list[Record] = []
    for rec in iter_records(path, spec, skip_invalid=skip_invalid, invalid=invalid):
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise RecordError(path, None, None, "no valid records" + (f" ({len(invalid)} invalid rows)" if invalid else ""))
    return out, invalid


def record_to_text(rec: Record, prefix: str = "", separator: str = "\n") -> str:
    """Plain text of a record for encoders and lexical baselines: prompt, separator, response."""
    if rec.prompt:
        return f"{prefix}{rec.prompt}{separator}{rec.response}"
    return f"{prefix}{rec.response}"


def write_records(path: str | Path, recs: list[Record]) -> Path:
    """Records as JSONL rows the default field mapping reads back to the same text: ``{"id", "prompt",
    "response"}``, or ``{"id", "messages"}`` for chat records (so stocking still renders the chat turns);
    written atomically."""
    from ..core.fileio import atomic_write_text

    def row(r: Record) -> dict:
        if r.messages:
            return {"id": r.id, "messages": r.messages}
        return {"id": r.id, "prompt": r.prompt, "response": r.response}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row(r), ensure_ascii=False) + "\n" for r in recs))
    return path


def record_key(rec: Record) -> str:
    """sha256 of what a decoder reads of a record (chat turns, or prompt and response; not its id or row): two
    records with the same key have the same gradient."""
    import hashlib

    doc = {"messages": rec.messages} if rec.messages else {"prompt": rec.prompt, "response": rec.response}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
