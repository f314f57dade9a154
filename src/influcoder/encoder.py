"""The student: a bi-encoder whose cosine similarities predict influence (METHOD.md §2).

``InfluenceEncoder`` wraps a ``sentence_transformers.SentenceTransformer`` built from standard modules
(``Transformer`` → ``Pooling`` (mean by default) → optional ``Dense`` projection → ``Normalize``), so the
folder it saves is an ordinary sentence-transformers folder: ``SentenceTransformer(dir).encode(texts)``
gives the same embeddings as ``InfluenceEncoder.from_pretrained(dir).encode(texts)``. Per-side prefixes
are saved as sentence-transformers prompts named ``"pool"`` and ``"query"`` (use ``prompt_name=`` there).

Influcoder metadata (teacher, label fingerprint, training config, validation metrics) lives in
``influcoder_encoder.json`` in the same folder and is exposed as :attr:`InfluenceEncoder.metadata`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["InfluenceEncoder", "METADATA_FILE", "SIDES"]

METADATA_FILE = "influcoder_encoder.json"
SIDES = ("pool", "query")


def _modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.sentence_transformer import modules as M
    return M


def _texts(items: Sequence[Any] | str) -> list[str]:
    """Records become ``prompt + "\\n" + response`` (records.record_to_text); strings pass through."""
    from .records import Record, record_to_text

    if isinstance(items, (str, Record)):
        items = [items]
    out = []
    for i, x in enumerate(items):
        if isinstance(x, Record):
            out.append(record_to_text(x))
        elif isinstance(x, str):
            out.append(x)
        else:
            raise TypeError(f"item {i}: expected a str or a Record, got {type(x).__name__}")
    return out


class InfluenceEncoder:
    """Shared-weight bi-encoder for influence embeddings; predicted influence = cos(E(pool), E(query))."""

    def __init__(self, st_model, metadata: dict | None = None):
        self.model = st_model
        """The underlying ``SentenceTransformer`` (Transformer, Pooling, [Dense], Normalize)."""
        self.metadata: dict = dict(metadata or {})
        """Influcoder metadata (teacher, labels, training config, validation metrics); saved as JSON."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike,
        *,
        pooling: str = "mean",
        projection_dim: int | None = None,
        max_length: int | None = None,
        pool_prefix: str = "",
        query_prefix: str = "",
        device: str = "cpu",
        seed: int = 0,
    ) -> "InfluenceEncoder":
        """Load a saved InfluenceEncoder / sentence-transformers folder, or build one on any HF encoder.

        ``name_or_dir``: a folder written by :meth:`save`, a sentence-transformers folder, a plain Hugging
        Face encoder (hub id or folder; a pooling head is added), or the packaged short name ``minilm-l6``.
        ``pooling``/``projection_dim``/prefixes apply when a head is built; a saved folder keeps its own
        (a projection is only added to a folder that has none). ``max_length`` overrides the token limit."""
        import torch
        from sentence_transformers import SentenceTransformer

        from .errors import UserError
        from .models import ModelNotAvailable, resolve_encoder

        if pooling not in ("mean", "cls", "max"):
            raise UserError(f"pooling must be mean, cls or max, got {pooling!r}")
        path = resolve_encoder(str(name_or_dir))
        p = Path(path)
        M = _modules()
        metadata: dict = {}
        try:
            if (p / "modules.json").exists():
                model = SentenceTransformer(str(p), device=device)
                if (p / METADATA_FILE).exists():
                    metadata = json.loads((p / METADATA_FILE).read_text())
                mods = list(model._modules.values())
                has_dense = any(isinstance(m, M.Dense) for m in mods)
                if projection_dim and not has_dense:
                    mods = [m for m in mods if not isinstance(m, M.Normalize)]
                    torch.manual_seed(seed)
                    mods.append(M.Dense(cls(model).dim, projection_dim, bias=False,
                                        activation_function=torch.nn.Identity()))
                    mods.append(M.Normalize())
                    model = SentenceTransformer(modules=mods, device=device, prompts=model.prompts)
                elif not isinstance(mods[-1], M.Normalize):
                    model = SentenceTransformer(modules=mods + [M.Normalize()], device=device, prompts=model.prompts)
            else:
                transformer = M.Transformer(path)
                dim = transformer.get_embedding_dimension() if hasattr(transformer, "get_embedding_dimension") else transformer.get_word_embedding_dimension()
                mods = [transformer, M.Pooling(dim, pooling_mode=pooling)]
                if projection_dim:
                    torch.manual_seed(seed)
                    mods.append(M.Dense(dim, projection_dim, bias=False, activation_function=torch.nn.Identity()))
                mods.append(M.Normalize())
                model = SentenceTransformer(modules=mods, device=device)
        except OSError as e:
            raise ModelNotAvailable(
                f"Cannot load encoder '{name_or_dir}' ({e}). Give a local folder, a hub id on a machine with "
                f"internet, or the packaged short name minilm-l6."
            ) from None
        prompts = dict(model.prompts or {})
        for side, prefix in (("pool", pool_prefix), ("query", query_prefix)):
            if prefix:
                prompts[side] = prefix
            prompts.setdefault(side, "")
        model.prompts = prompts
        if max_length is not None:
            model.max_seq_length = int(max_length)
        model.eval()
        enc = cls(model, metadata)
        enc.metadata.setdefault("base_encoder", str(name_or_dir))
        return enc

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        m = self.model
        return int(m.get_embedding_dimension() if hasattr(m, "get_embedding_dimension") else m.get_sentence_embedding_dimension())

    @property
    def max_length(self) -> int:
        """Token limit per text (longer texts are truncated from the right)."""
        return int(self.model.max_seq_length)

    def prefix(self, side: str) -> str:
        """The prefix prepended to texts of ``side`` ("pool" or "query")."""
        if side not in SIDES:
            raise ValueError(f"side must be 'pool' or 'query', got {side!r}")
        return (self.model.prompts or {}).get(side, "")

    def parameters(self):
        return self.model.parameters()

    def train(self, mode: bool = True) -> "InfluenceEncoder":
        self.model.train(mode)
        return self

    def eval(self) -> "InfluenceEncoder":
        return self.train(False)

    # ------------------------------------------------------------------ encoding
    def embed(self, items: Sequence[Any], side: str = "pool"):
        """Differentiable embeddings (torch, (n, dim), L2-normalised) of one batch, for training."""
        prefix = self.prefix(side)
        feats = self.model.preprocess(_texts(items), prompt=prefix or None)
        dev = self.model.device
        feats = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in feats.items()}
        return self.model(feats)["sentence_embedding"]

    def encode(self, items: Sequence[Any] | str, batch_size: int = 32, side: str = "pool",
               show_progress_bar: bool = False) -> np.ndarray:
        """L2-normalised float32 numpy embeddings of texts or Records ((n, dim); one text → (1, dim))."""
        texts = _texts(items)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.prefix(side)
        was_training = self.model.training
        self.model.eval()
        try:
            emb = self.model.encode(texts, batch_size=batch_size, prompt=prefix or None, convert_to_numpy=True,
                                    show_progress_bar=show_progress_bar)
        finally:
            self.model.train(was_training)
        return np.asarray(emb, dtype=np.float32)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix (len(a) × len(b)) = predicted influence of a-rows on b-rows."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float32))
        b = np.atleast_2d(np.asarray(b, dtype=np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write a sentence-transformers folder plus ``influcoder_encoder.json``, atomically (temp + rename).

        An existing folder at ``out_dir`` is replaced, except for files this method does not write
        (e.g. a training log or config beside the model), which are kept."""
        out = Path(out_dir)
        if metadata is not None:
            self.metadata = dict(metadata)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            self.model.save(str(tmp), create_model_card=False)
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata, indent=1, default=str))
            if out.exists():
                for child in out.iterdir():  # keep files beside the model that save() does not own
                    if not (tmp / child.name).exists():
                        os.replace(child, tmp / child.name)
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "x")
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    def __repr__(self) -> str:
        return f"InfluenceEncoder(dim={self.dim}, max_length={self.max_length}, base={self.metadata.get('base_encoder')!r})"


# ---------------------------------------------------------------------------------------- identity
# Which encoder made an embedding: the folder, a fingerprint of the files that determine its embeddings,
# and its influcoder metadata. Every artefact made with an encoder (embedding store, index, filter report)
# records this, and every consumer compares fingerprints before mixing embeddings.

# Files of a (sentence-transformers / transformers) model folder that determine its embeddings.
_FINGERPRINT_NAMES = {
    "config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_encoder_path(name: str | os.PathLike) -> Path:
    """The local folder of an encoder given as a folder or a packaged short name (``minilm-l6``)."""
    from .errors import UserError
    from .models import resolve_encoder

    path = Path(resolve_encoder(str(name)))
    if not path.is_dir():
        raise UserError(
            f"encoder '{name}' is not a folder here; give a trained encoder folder (influcoder train --out) or 'minilm-l6'"
        )
    return path


def encoder_fingerprint(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """sha256 over the names and bytes of the files that determine an encoder's embeddings.

    Weights (``*.safetensors``/``*.bin``) and configuration/tokenizer files of the folder and of the
    sentence-transformers module folders it lists in ``modules.json``; README, logs, metrics, the
    influcoder metadata and training checkpoints are ignored, so re-reading the same model always gives
    the same fingerprint."""
    import hashlib

    from .errors import UserError

    root = resolve_encoder_path(name_or_path)
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


def load_encoder(name: str | os.PathLike, device: str = "cpu") -> InfluenceEncoder:
    """Load an :class:`InfluenceEncoder` (folder or ``minilm-l6``); a bad folder is a :class:`UserError`."""
    from .errors import UserError

    resolve_encoder_path(name)
    try:
        return InfluenceEncoder.from_pretrained(str(name), device=device)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load encoder '{name}': {e}") from None


def encoder_metadata(encoder) -> dict[str, Any]:
    """The influcoder metadata of a loaded encoder (``{}`` for objects without any)."""
    meta = getattr(encoder, "metadata", None)
    return dict(meta) if isinstance(meta, dict) else {}


def read_encoder_metadata(name: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`load_encoder` would give the encoder, read from its folder without loading
    the model (what a Ray driver records in an embedding store's manifest)."""
    p = resolve_encoder_path(name)
    meta: dict[str, Any] = {}
    if (p / "modules.json").exists() and (p / METADATA_FILE).exists():
        meta = json.loads((p / METADATA_FILE).read_text())
    meta.setdefault("base_encoder", str(name))
    return meta


__all__ += ["resolve_encoder_path", "encoder_fingerprint", "encoder_identity", "load_encoder", "encoder_metadata",
            "read_encoder_metadata"]
