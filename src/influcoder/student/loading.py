"""Encoder folders: resolve a name to a folder, fingerprint it, load it (a trained encoder, a base one, or an
exact-query model), read its metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .encoder import METADATA_FILE, InfluenceEncoder
from .texts import TEXT_MODE, TEXT_MODE_LEGACY

_FINGERPRINT_NAMES = {
    "config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_encoder_path(name: str | os.PathLike) -> Path:
    """The local folder of an encoder given as a folder or a packaged short name (``minilm-l6``)."""
    from ..core.errors import UserError
    from ..core.models import ENCODER_SHORT_NAMES, resolve_encoder

    path = Path(resolve_encoder(str(name)))
    if not path.is_dir():
        raise UserError(
            f"encoder '{name}' is not a folder here; give a trained encoder folder (influcoder train --out) or a "
            f"packaged short name ({', '.join(ENCODER_SHORT_NAMES)})"
        )
    return path


def encoder_fingerprint(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """sha256 over the names and bytes of the files that determine an encoder's embeddings.

    Weights (``*.safetensors``/``*.bin``) and configuration/tokenizer files of the folder and of the
    sentence-transformers module folders it lists in ``modules.json``; README, logs, metrics, the
    influcoder metadata and training checkpoints are ignored, so re-reading the same model always gives
    the same fingerprint."""
    import hashlib

    from ..core.errors import UserError

    root = resolve_encoder_path(name_or_path)
    from .exact_query import MODEL_FILE, TENSORS_FILE, is_exact_query_folder

    if is_exact_query_folder(root):  # its own files, its adapter's, and the fingerprint of the encoder it reads
        h = hashlib.sha256()
        files = [p for p in [root / MODEL_FILE, root / TENSORS_FILE, *sorted((root / "adapter").glob("*"))] if p.is_file()]
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        base = json.loads((root / MODEL_FILE).read_text())["encoder"]
        h.update(encoder_fingerprint(base)["sha256"].encode())
        return {"sha256": h.hexdigest(), "files": [p.relative_to(root).as_posix() for p in files] + [f"encoder:{base}"]}
    folders = [root]
    modules = root / "modules.json"
    if modules.exists():
        try:
            for m in json.loads(modules.read_text()):
                sub = m.get("path") or ""
                if sub and (root / sub).is_dir():
                    folders.append(root / sub)
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass
    files: list[Path] = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.is_file() and (p.name in _FINGERPRINT_NAMES or p.name.endswith(_WEIGHT_SUFFIXES)):
                files.append(p)
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise UserError(f"{root}: no model weights (*.safetensors / *.bin) found; not an encoder folder")
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    return {"sha256": h.hexdigest(), "files": [p.relative_to(root).as_posix() for p in files]}


def encoder_identity(name: str | os.PathLike) -> dict[str, Any]:
    """What an artefact records about the encoder that made it: name as given, folder, fingerprint."""
    fp = encoder_fingerprint(name)
    return {"name": str(name), "path": str(resolve_encoder_path(name)), "fingerprint": fp["sha256"],
            "fingerprint_files": fp["files"]}


def load_encoder(name: str | os.PathLike, device: str = "cpu", precision: str = "float32",
                 stage: str | None = None) -> InfluenceEncoder:
    """Load an :class:`InfluenceEncoder` (folder or ``minilm-l6``) — or, for a folder of an exact-query model
    (``influcoder run`` with ``scorer: exact-query`` writes one: exact_query/model), an
    :class:`~influcoder.student.exact_query.ExactQueryEncoder`, which encodes the same way — on ``device`` (``auto``: CUDA when present)
    with forward ``precision`` (``auto``: bf16 where the device computes it natively; see
    influcoder.core.hardware); a bad folder is a :class:`UserError`. ``stage`` names who loads it in the one line
    that says which device and precision were chosen."""
    from ..core.errors import UserError
    from ..core.hardware import announce, resolve

    from .exact_query import ExactQueryEncoder, is_exact_query_folder

    path = resolve_encoder_path(name)
    dev, prec = resolve(device, precision)
    try:
        enc = (ExactQueryEncoder(path, device=dev, precision=prec) if is_exact_query_folder(path)
               else InfluenceEncoder.from_pretrained(str(name), device=dev))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load encoder '{name}': {e}") from None
    enc.precision = prec
    if stage:
        announce(stage, dev, prec, precision)
    return enc


def encoder_metadata(encoder) -> dict[str, Any]:
    """The influcoder metadata of a loaded encoder (``{}`` for objects without any)."""
    meta = getattr(encoder, "metadata", None)
    return dict(meta) if isinstance(meta, dict) else {}


def read_encoder_metadata(name: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`load_encoder` would give the encoder, read from its folder without loading
    the model (what a Ray driver records in an embedding store's manifest)."""
    p = resolve_encoder_path(name)
    from .exact_query import ExactQueryModel, is_exact_query_folder

    if is_exact_query_folder(p):  # as ExactQueryEncoder.metadata gives it (the base encoder's text contract)
        m = ExactQueryModel.load(p)
        return {**(m.metadata or {}), "kind": "exact-query", "base_encoder": m.encoder, "exact_query": m.describe(),
                "text": read_encoder_metadata(m.encoder).get("text")}
    meta: dict[str, Any] = {}
    saved = (p / "modules.json").exists() and (p / METADATA_FILE).exists()
    if saved:
        meta = json.loads((p / METADATA_FILE).read_text())
    meta.setdefault("base_encoder", str(name))
    meta.setdefault("text", {"mode": TEXT_MODE_LEGACY if saved else TEXT_MODE})  # as from_pretrained sets it
    return meta

__all__ = ["resolve_encoder_path", "encoder_fingerprint", "encoder_identity", "load_encoder", "encoder_metadata",
           "read_encoder_metadata"]
