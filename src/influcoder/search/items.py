"""What the search commands score: queries and pool items read from a records file and/or given as text on the
command line (records, or plain strings)."""

from __future__ import annotations

from typing import Sequence

from ..core.errors import UserError
from ..data.records import DataSpec, Record, record_to_text

__all__ = ["load_items", "item_text"]


def load_items(data: DataSpec | None, texts: Sequence[str] | None, what: str) -> tuple[list[str], list[Record | str]]:
    """Queries (or pool items) from a records file (``data``, read with its field mapping, limit and skip_invalid)
    and/or texts given on the command line.

    Texts get ids ``text:0``, ``text:1``, ... Returns ``(ids, items)``."""
    ids: list[str] = []
    items: list[Record | str] = []
    if data is not None and data.path:
        recs, _ = data.read()
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
