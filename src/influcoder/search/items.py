"""What the search commands score: queries and pool items read from a records file and/or given as text on the
command line (records, or plain strings)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["load_items", "item_text", "field_spec_of"]


from ..core.errors import UserError
from ..data.records import PRESETS, FieldSpec, Record, read_records, record_to_text


def field_spec_of(preset, prompt_field, response_field, messages_field=None, id_field=None) -> FieldSpec:
    if preset and preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    return FieldSpec.from_names(prompt_field, response_field, messages_field, id_field, preset)


def load_items(path: str | None, texts: Sequence[str] | None, spec: FieldSpec, what: str,
               *, skip_invalid: bool = False, limit: int | None = None) -> tuple[list[str], list[Record | str]]:
    """Queries (or pool items) from a records file and/or texts given on the command line.

    Texts get ids ``text:0``, ``text:1``, ... Returns ``(ids, items)``."""
    ids: list[str] = []
    items: list[Record | str] = []
    if path:
        recs, _ = read_records(path, spec, skip_invalid=skip_invalid, limit=limit)
        ids += [r.id for r in recs]
        items += recs
    for i, t in enumerate(texts or []):
        if not t or not t.strip():
            raise UserError(f"{what} text {i} (given on the command line) is empty")
        ids.append(f"text:{i}")
        items.append(t)
    if not items:
        raise UserError(f"no {what}: give a file or text on the command line")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"duplicate {what} id '{dup}'")
    return ids, items


def item_text(item: Record | str) -> str:
    return record_to_text(item) if isinstance(item, Record) else str(item)
