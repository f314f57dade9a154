"""What the encoder reads: the text of each item (a record, a dict row or a string) and, under a token budget, the
text that keeps the record's response (the prompt cut from the left, as the teacher cuts it)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["TEXT_MODE", "TEXT_MODE_LEGACY", "TEXT_MODES", "to_texts", "budget_text"]

TEXT_MODE = "response-kept"
"""How a new encoder reads a record: :func:`budget_text` (the whole response within the token budget, the prompt
cut from the left, as the teacher cuts it)."""
TEXT_MODE_LEGACY = "right-cut"
"""How encoders saved before the input contract read a record: prompt + "\\n" + response, cut from the right."""
TEXT_MODES = (TEXT_MODE, TEXT_MODE_LEGACY)


def to_texts(items: Sequence[Any] | str | dict, to_text=None) -> list[str]:
    """The texts the encoder sees: a record (or dict row) through ``to_text`` (default records.record_to_text:
    prompt + "\\n" + response, the legacy text), a string as it is.

    Accepts a string, a :class:`~influcoder.data.records.Record`, or a dict row as read from JSONL or a
    ``datasets`` row (``prompt``/``response`` or chat ``messages``, read with the default field mapping
    of the CLI), or a list/iterable of those. A single string, Record or dict is one item (a dict is never
    iterated as its keys). Anything else raises TypeError; a dict that is not a record raises a
    :class:`~influcoder.data.records.RecordError` naming the item and the field."""
    from ..data.records import FieldSpec, Record, row_to_record, record_to_text

    to_text = to_text or record_to_text
    if isinstance(items, (str, Record, dict)):
        items = [items]
    elif isinstance(items, (bytes, bytearray)) or not hasattr(items, "__iter__"):
        raise TypeError(f"expected a str, a Record, a dict row or a list of them, got {type(items).__name__}")
    out = []
    spec = FieldSpec()
    for i, x in enumerate(items):
        if isinstance(x, Record):
            out.append(to_text(x))
        elif isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            out.append(to_text(row_to_record("encode() input", i, x, spec)))
        else:
            raise TypeError(f"item {i}: expected a str, a Record or a dict row (prompt/response or messages), "
                            f"got {type(x).__name__}")
    return out


def budget_text(rec, tokenizer, max_tokens: int, separator: str = "\n") -> tuple[str, str]:
    """The text of a record that fits ``max_tokens`` encoder tokens (special tokens counted) *keeping the
    response*: the whole response when it fits, else its start; the end of the prompt fills what is left (the
    prompt is cut from the left, as the teacher cuts it). Returns ``(text, seen)``, ``seen`` saying how much of
    the response the encoder reads: ``full`` or ``part``. Cut at token boundaries through the fast tokenizer's
    character offsets, so the text is a substring join of the record's own prompt and response."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ValueError(f"max_tokens {max_tokens} leaves no room after the special tokens")
    r = tokenizer(rec.response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(r) >= budget:
        return (rec.response[: r[budget - 1][1]] if r else rec.response), ("full" if len(r) == budget else "part")
    left = budget - len(r)
    if not rec.prompt:
        return rec.response, "full"
    p = tokenizer(rec.prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if not p:
        return rec.response, "full"
    start = 0 if len(p) <= left else p[len(p) - left][0]
    return f"{rec.prompt[start:]}{separator}{rec.response}", "full"
