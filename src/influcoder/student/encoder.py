"""The student: a bi-encoder whose cosine similarities predict influence (METHOD.md §2).

``InfluenceEncoder`` wraps a ``sentence_transformers.SentenceTransformer`` built from standard modules
(``Transformer`` → ``Pooling`` (mean by default) → optional ``Dense`` projection → ``Normalize``), so the
folder it saves is an ordinary sentence-transformers folder: ``SentenceTransformer(dir).encode(texts)``
gives the same embeddings as ``InfluenceEncoder.from_pretrained(dir).encode(texts)``. Per-side prefixes
are saved as sentence-transformers prompts named ``"pool"`` and ``"query"`` (use ``prompt_name=`` there);
the pool prefix is saved as ``"document"`` too, so ``SentenceTransformer(dir).encode_document(texts)`` and
``.encode_query(texts)`` match :meth:`InfluenceEncoder.encode_document` / :meth:`~InfluenceEncoder.encode_query`.

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

from ..core.errors import UserError
from .prior import PRIOR_FEATURES, build_prior, prior_input
from .prior_trees import STYLE_FEATURES
from .texts import TEXT_MODE, TEXT_MODE_LEGACY, TEXT_MODES, budget_text, to_texts

__all__ = ["InfluenceEncoder", "METADATA_FILE", "PRIOR_FILE", "PRIOR_TREES_FILE", "SIDES", "cosine_rows"]

METADATA_FILE = "influcoder_encoder.json"
PRIOR_FILE = "influcoder_prior.safetensors"
PRIOR_TREES_FILE = "influcoder_prior_trees.safetensors"
SIDES = ("pool", "query")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix (len(a) × len(b)) = predicted influence of a-rows on b-rows."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.sentence_transformer import modules as M
    return M


class TextOnlyRowWarning(UserWarning):
    """A plain string was scored on the pool side of an encoder whose pool prior reads the response."""


class InfluenceEncoder:
    """Shared-weight bi-encoder for influence embeddings; predicted influence = cos(E(pool), E(query))."""

    def __init__(self, st_model, metadata: dict | None = None, prior=None):
        self.model = st_model
        """The underlying ``SentenceTransformer`` (Transformer, Pooling, [Dense], Normalize)."""
        self.metadata: dict = dict(metadata or {})
        """Influcoder metadata (teacher, labels, training config, validation metrics); saved as JSON."""
        self.prior = prior
        """Optional pool-side prior b(p) (:func:`build_prior`); None for a plain cosine bi-encoder."""
        self.prior_trees = None
        """Optional boosted pool prior (prior_trees.TreeEnsemble; needs ``prior``): adds κ·clip(g(p)) to b(p)."""
        self.prior_trees_kappa = 0.0
        self.prior_trees_clip = (0.0, 0.0)
        self.precision = "float32"
        """Precision of the forward passes of :meth:`text_embeddings` / :meth:`embed` (resolved: float32 or
        bfloat16 autocast on the model's device; :func:`load_encoder` resolves ``auto``)."""

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
        Face encoder (hub id or folder; a pooling head is added), or a packaged short name (``minilm-l6``,
        ``mpnet-base``).
        ``pooling``/``projection_dim``/prefixes apply when a head is built; a saved folder keeps its own
        (a projection is only added to a folder that has none). ``max_length`` overrides the token limit."""
        import torch
        from sentence_transformers import SentenceTransformer

        from ..core.models import ENCODER_SHORT_NAMES, ModelNotAvailable, resolve_encoder

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
                f"internet, or a packaged short name ({', '.join(ENCODER_SHORT_NAMES)})."
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
        prior = None
        if (p / PRIOR_FILE).exists():
            from safetensors.torch import load_file

            spec = metadata.get("prior") or {}
            try:
                prior = build_prior(int(spec["dim"]), int(spec["hidden"]))
                prior.load_state_dict(load_file(str(p / PRIOR_FILE)))
            except (KeyError, RuntimeError) as e:
                raise UserError(f"{p / PRIOR_FILE}: pool prior does not match {METADATA_FILE}'s 'prior' entry ({e})") from None
            prior.to(device).eval()
        enc = cls(model, metadata, prior)
        trees = (metadata.get("prior") or {}).get("trees")
        if prior is not None and trees:
            from safetensors.torch import load_file

            from .prior_trees import TreeEnsemble

            try:  # κ and the clip range live in the weights file too, so the encoder's fingerprint covers them
                t = load_file(str(p / trees["file"]))
                kappa = float(t["kappa"][0]) if "kappa" in t else float(trees["kappa"])  # (first files: metadata only)
                clip = t["clip"].tolist() if "clip" in t else trees["clip"]
                enc.set_prior_trees(TreeEnsemble.from_tensors(t), kappa, clip)
            except (KeyError, OSError, RuntimeError, ValueError) as e:
                raise UserError(f"{p}: boosted pool prior does not match {METADATA_FILE}'s 'prior.trees' entry ({e})") from None
        enc.metadata.setdefault("base_encoder", str(name_or_dir))
        # the input contract: an encoder saved before it existed read prompt + response cut from the right and
        # keeps doing so (its scores reproduce); every new encoder keeps the response (see :meth:`texts`)
        saved = (p / "modules.json").exists() and (p / METADATA_FILE).exists()
        enc.metadata.setdefault("text", {"mode": TEXT_MODE_LEGACY if saved else TEXT_MODE})
        if enc.metadata["text"].get("mode") not in TEXT_MODES:
            raise UserError(f"{p / METADATA_FILE}: text mode must be one of {', '.join(TEXT_MODES)}, "
                            f"got {enc.metadata['text'].get('mode')!r}")
        return enc

    # ------------------------------------------------------------------ properties
    @property
    def embedding_dim(self) -> int:
        """Dimension of the normalised text embedding (the cosine part)."""
        m = self.model
        return int(m.get_embedding_dimension() if hasattr(m, "get_embedding_dimension") else m.get_sentence_embedding_dimension())

    @property
    def dim(self) -> int:
        """Width of the vectors :meth:`encode` returns: the embedding, plus the prior's two coordinates if any."""
        return self.embedding_dim + (2 if self.prior is not None else 0)

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
        import itertools

        return itertools.chain(self.model.parameters(), self.prior.parameters() if self.prior is not None else ())

    def state_dict(self) -> dict:
        """Weights of the encoder and the prior (for checkpoints)."""
        return {"model": self.model.state_dict(), "prior": self.prior.state_dict() if self.prior is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.prior is not None and state.get("prior") is not None:
            self.prior.load_state_dict(state["prior"])

    def train(self, mode: bool = True) -> "InfluenceEncoder":
        self.model.train(mode)
        if self.prior is not None:
            self.prior.train(mode)
        return self

    @staticmethod
    def feature_items(items: Sequence[Any] | str) -> list:
        """Items as the prior's features read them: a list, dict rows turned into the records _texts would make
        of them (once), so that their prompt and response are at hand."""
        from ..data.records import FieldSpec, Record, row_to_record

        if isinstance(items, (str, Record, dict)):
            items = [items]
        return [row_to_record("encode() input", i, x, FieldSpec()) if isinstance(x, dict) else x
                for i, x in enumerate(items)]

    def length_features(self, items: Sequence[Any] | str) -> np.ndarray:
        """(n, 2) float32: log1p of the untruncated encoder-token counts of each item's text and of its response."""
        from ..data.records import Record

        items = self.feature_items(items)
        texts = to_texts(items)
        resp = [x.response if isinstance(x, Record) else t for x, t in zip(items, texts)]
        tok = self.model.tokenizer
        n_all = [len(ids) for ids in tok(texts, add_special_tokens=False, truncation=False)["input_ids"]]
        n_resp = [len(ids) for ids in tok(resp, add_special_tokens=False, truncation=False)["input_ids"]]
        return np.log1p(np.stack([n_all, n_resp], axis=1).astype(np.float32))

    def prior_features(self, items: Sequence[Any] | str) -> np.ndarray:
        """What the whole pool prior reads beside the embedding: :meth:`length_features` (the MLP's two) and, for
        the boosted prior, prior_trees.style_features, side by side ((n, 2 + len(STYLE_FEATURES)) float32)."""
        from .prior_trees import style_features

        items = self.feature_items(items)
        return np.hstack([self.length_features(items), style_features(items)]).astype(np.float32)

    def set_prior_trees(self, trees, kappa: float, clip) -> None:
        """Attach a boosted pool prior: b(p) becomes w·tanh(MLP) + κ·clip(g(p), lo, hi), g the trees' prediction on
        [embedding, :meth:`prior_features`]. κ ≥ 0; κ = 0 or ``trees`` None removes it."""
        if self.prior is None:
            raise ValueError("a boosted pool prior needs the pool prior (pool_prior)")
        lo, hi = (float(clip[0]), float(clip[1]))
        if not (kappa >= 0 and lo <= hi and np.isfinite([kappa, lo, hi]).all()):
            raise ValueError(f"set_prior_trees: need κ ≥ 0 and lo ≤ hi, got κ={kappa}, clip=({lo}, {hi})")
        if trees is not None and kappa > 0 and trees.n_features != self.embedding_dim + 2 + len(STYLE_FEATURES):
            raise ValueError(f"set_prior_trees: the trees read {trees.n_features} features, this encoder gives "
                             f"{self.embedding_dim + 2 + len(STYLE_FEATURES)}")
        keep = trees is not None and kappa > 0
        self.prior_trees = trees if keep else None
        self.prior_trees_kappa = float(kappa) if keep else 0.0
        self.prior_trees_clip = (lo, hi) if keep else (0.0, 0.0)

    def tree_scores(self, pool_emb, features) -> np.ndarray:
        """κ·clip(g(p)) of the boosted pool prior ((n,) float64; zeros without one). ``features``: the items'
        :meth:`prior_features` (the two length features alone are not enough once there are trees)."""
        n = int(pool_emb.shape[0])
        if self.prior_trees is None:
            return np.zeros(n)
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != 2 + len(STYLE_FEATURES):
            raise ValueError("the boosted pool prior reads prior_features(items) (length and style features), "
                             f"got an array of shape {features.shape}; pass the items instead")
        X = np.hstack([np.asarray(pool_emb, dtype=np.float32), features])
        lo, hi = self.prior_trees_clip
        return self.prior_trees_kappa * np.clip(self.prior_trees.predict(X), lo, hi)

    def prior_bound(self) -> float:
        """W > |b(p)| for every pool example: w of the MLP prior plus κ·max(|lo|, |hi|) of the boosted prior."""
        import torch

        with torch.no_grad():
            w = float(self.prior.weight)
        lo, hi = self.prior_trees_clip
        return w + self.prior_trees_kappa * max(abs(lo), abs(hi))

    def prior_scores(self, pool_emb, lengths):
        """b(p) for normalised pool embeddings and their :meth:`length_features` (or, with a boosted prior, their
        :meth:`prior_features`) (torch → (n,)); zeros without a prior."""
        import torch

        if self.prior is None:
            return torch.zeros(pool_emb.shape[0], dtype=torch.float32)
        b = self.prior(self.prior_input(pool_emb, lengths).to(self.prior.raw_w.device))
        if self.prior_trees is not None:
            e = pool_emb.detach().cpu().numpy() if hasattr(pool_emb, "detach") else pool_emb
            lf = lengths.detach().cpu().numpy() if hasattr(lengths, "detach") else lengths
            b = b + torch.from_numpy(self.tree_scores(e, lf)).to(b.device, b.dtype)
        return b

    prior_input = staticmethod(prior_input)

    def score_vectors(self, emb: np.ndarray, side: str, items: Sequence[Any] | None = None,
                      lengths: np.ndarray | None = None) -> np.ndarray:
        """Normalised embeddings → unit vectors whose inner product is a fixed positive multiple of the predicted
        influence cos + b(p) (see :func:`build_prior`); unchanged without a prior. ``items``: the pool items
        (the prior reads their lengths), or ``lengths``: their :meth:`length_features`, already computed."""
        if self.prior is None:
            return emb
        import torch

        a2 = self.score_scale()
        a, s = np.sqrt(a2), np.sqrt(1.0 - a2)
        n = emb.shape[0]
        if side == "pool":
            if items is None and lengths is None:
                raise ValueError("score_vectors: the pool side needs its items or their lengths (the prior reads them)")
            if lengths is None:
                lengths = self.prior_features(items) if self.prior_trees is not None else self.length_features(items)
            with torch.no_grad():
                x = self.prior_input(np.ascontiguousarray(emb, dtype=np.float32), lengths)
                b = float(self.prior.weight) * self.prior.unit(x.to(self.prior.raw_w.device)).double().cpu().numpy()
            b = b + self.tree_scores(emb, lengths)
            r = np.clip(b / self.prior_bound(), -1.0, 1.0)
            extra = np.stack([s * r, np.sqrt(np.maximum(0.0, 1.0 - a2 - (s * r) ** 2))], axis=1)
        else:
            extra = np.tile(np.array([[s, 0.0]]), (n, 1))
        return np.hstack([a * emb.astype(np.float64), extra]).astype(np.float32)

    def score_scale(self) -> float:
        """a² = 1/(1 + W), W = :meth:`prior_bound`: inner products of :meth:`encode` vectors are this times
        cos + b(p) (1 without a prior)."""
        if self.prior is None:
            return 1.0
        return 1.0 / (1.0 + self.prior_bound())

    def eval(self) -> "InfluenceEncoder":
        return self.train(False)

    # ------------------------------------------------------------------ encoding
    @property
    def device(self) -> str:
        return str(self.model.device)

    def embed(self, items: Sequence[Any], side: str = "pool"):
        """Differentiable embeddings (torch, (n, dim), L2-normalised) of one batch, for training (the caller
        chooses the autocast)."""
        prefix = self.prefix(side)
        feats = self.model.preprocess(to_texts(items), prompt=prefix or None)
        dev = self.model.device
        feats = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in feats.items()}
        return self.model(feats)["sentence_embedding"]

    def encode(self, items: Sequence[Any] | str, batch_size: int = 32, side: str = "pool",
               show_progress_bar: bool = False) -> np.ndarray:
        """L2-normalised float32 numpy embeddings ((n, dim); one item → (1, dim)) of texts, Records or dict
        rows (``{"prompt", "response"}`` or ``{"messages"}``, as read from JSONL or a ``datasets`` row).

        Records are read through the input contract (:meth:`texts`: the response kept). A plain string is read as it
        is; on the pool side of an encoder with a pool prior it is a *text-only row*: the prior takes the whole
        string as the response (it has no prompt), and a :class:`TextOnlyRowWarning` says so."""
        if side == "pool" and self.prior is not None:
            bad = [i for i, x in enumerate([items] if isinstance(items, str) else items) if isinstance(x, str)]
            if bad:
                warnings.warn(f"{len(bad)} pool item(s) (the first: item {bad[0]}) are plain strings: scored as text-only "
                              "rows, the whole string read as the response by the pool prior (its length and form); "
                              "give records (prompt/response or messages rows) to score them as records",
                              TextOnlyRowWarning, stacklevel=2)
        emb = self.text_embeddings(items, batch_size=batch_size, side=side, show_progress_bar=show_progress_bar)
        if not len(emb):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.score_vectors(emb, side, items)

    @property
    def text_mode(self) -> str:
        """``response-kept`` or ``right-cut`` (legacy): how :meth:`texts` turns a record into the text read."""
        return (self.metadata.get("text") or {}).get("mode", TEXT_MODE_LEGACY)

    def _budget(self, side: str) -> int:
        """Tokens left for a record's text: the token limit minus the side's prefix (the special tokens are
        counted by :func:`budget_text`)."""
        prefix = self.prefix(side)
        n = len(self.model.tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
        return self.max_length - n

    def texts(self, items: Sequence[Any] | str, side: str = "pool") -> list[str]:
        """The texts the encoder reads — the one input contract of training, :meth:`encode`, ``embed``,
        ``attribute``, ``filter``, ``serve`` and Ray. A record (or dict row) keeps its whole response within the
        token budget and the end of its prompt fills the rest (:func:`budget_text`; legacy encoders: prompt +
        response cut from the right); a plain string is read as it is."""
        if self.text_mode == TEXT_MODE_LEGACY:
            return to_texts(items)
        tok, budget = self.model.tokenizer, self._budget(side)
        return to_texts(items, lambda rec: budget_text(rec, tok, budget)[0])

    def response_seen(self, items: Sequence[Any], side: str = "pool") -> dict[str, float]:
        """Share of ``items`` (records) whose response the encoder reads fully, in part, or not at all (the
        legacy right cut can hide it behind a long prompt; the input contract never does)."""
        from ..data.records import Record

        tok = self.model.tokenizer
        counts = {"full": 0, "part": 0, "none": 0}
        recs = [r for r in self.feature_items(items) if isinstance(r, Record)]
        budget = self._budget(side) - tok.num_special_tokens_to_add(pair=False)
        for r in recs:
            n_r = len(tok(r.response, add_special_tokens=False)["input_ids"])
            if self.text_mode == TEXT_MODE_LEGACY:
                n_p = len(tok(r.prompt + "\n", add_special_tokens=False)["input_ids"]) if r.prompt else 0
                room = budget - n_p
            else:
                room = budget
            counts["full" if room >= n_r else ("part" if room > 0 else "none")] += 1
        n = max(len(recs), 1)
        return {k: v / n for k, v in counts.items()} | {"n": len(recs)}

    def text_embeddings(self, items: Sequence[Any] | str, batch_size: int = 32, side: str = "pool",
                        show_progress_bar: bool = False) -> np.ndarray:
        """The normalised text embeddings alone ((n, :attr:`embedding_dim`), float32, no prior coordinates):
        what :meth:`encode` builds its score vectors from."""
        texts = self.texts(items, side)
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        prefix = self.prefix(side)
        was_training = self.model.training
        self.model.eval()
        from ..core.hardware import autocast

        try:
            with autocast(self.device, self.precision):
                emb = self.model.encode(texts, batch_size=batch_size, prompt=prefix or None, convert_to_tensor=True,
                                        show_progress_bar=show_progress_bar)
            emb = emb.float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return np.asarray(emb, dtype=np.float32)

    def encode_query(self, items: Sequence[Any] | str, **kwargs) -> np.ndarray:
        """:meth:`encode` with the query side's prompt (the queries / reference behaviour)."""
        return self.encode(items, side="query", **kwargs)

    def encode_document(self, items: Sequence[Any] | str, **kwargs) -> np.ndarray:
        """:meth:`encode` with the pool side's prompt (training examples = sentence-transformers' documents)."""
        return self.encode(items, side="pool", **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix (len(a) × len(b)) = predicted influence of a-rows on b-rows (for an encoder
        with a pool prior, of its unit score vectors: a² · (cos + b(p)), see :meth:`score_scale`)."""
        return cosine_rows(a, b)

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write a sentence-transformers folder plus ``influcoder_encoder.json``, atomically (temp + rename).

        An existing folder at ``out_dir`` is replaced, except for files this method does not write
        (e.g. a training log or config beside the model), which are kept."""
        from ..core.killpoints import kill_point

        out = Path(out_dir)
        mode = self.text_mode
        if metadata is not None:
            self.metadata = dict(metadata)
        self.metadata.setdefault("text", {"mode": mode})  # the input contract travels with the weights
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            # the pool prompt is also saved as sentence-transformers' "document" prompt, so a plain
            # SentenceTransformer(dir).encode_document() / encode_query() formats texts as we do
            prompts = dict(self.model.prompts or {})
            prompts["document"] = prompts.get("pool", "")
            prompts.setdefault("query", "")
            self.model.prompts = prompts
            self.model.save(str(tmp), create_model_card=False)
            if self.prior is not None:
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in self.prior.state_dict().items()}, str(tmp / PRIOR_FILE))
                self.metadata["prior"] = {"kind": "w*tanh(mlp)", "dim": int(self.prior.dim), "hidden": int(self.prior.hidden),
                                          "weight": float(self.prior.weight.detach()), "features": list(PRIOR_FEATURES),
                                          "file": PRIOR_FILE, "score": "cos(E(q), E(p)) + b(p)",
                                          "vectors": "pool [a E(p), s r, sqrt(1-a^2-s^2 r^2)], query [a E(q), s, 0]"}
                if self.prior_trees is not None:
                    import torch

                    save_file({**self.prior_trees.to_tensors(),
                               "kappa": torch.tensor([self.prior_trees_kappa], dtype=torch.float64),
                               "clip": torch.tensor(list(self.prior_trees_clip), dtype=torch.float64)},
                              str(tmp / PRIOR_TREES_FILE))
                    self.metadata["prior"].update(
                        score="cos(E(q), E(p)) + b(p) + kappa * clip(g(p), lo, hi)",
                        trees={"file": PRIOR_TREES_FILE, "kind": "gradient-boosted regression trees",
                               "kappa": self.prior_trees_kappa, "clip": list(self.prior_trees_clip),
                               "n_trees": int(self.prior_trees.feature.shape[0]),
                               "features": [*PRIOR_FEATURES, *STYLE_FEATURES],
                               "target": "the teacher's pool factor: mean influence over the training queries"},
                        bound=self.prior_bound())
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata, indent=1, default=str))
            if out.exists():
                for child in out.iterdir():  # keep files beside the model that save() does not own
                    if not (tmp / child.name).exists() and child.name not in (PRIOR_FILE, PRIOR_TREES_FILE):
                        os.replace(child, tmp / child.name)
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / "x")
                kill_point("save:swap")  # the folder is away, the new one not yet in place (tests/test_resume.py)
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
