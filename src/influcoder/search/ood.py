"""Out-of-distribution (OOD) reports: each query and pool example gets its nearest-neighbour cosine similarity to
the encoder's own training examples (queries to training queries, pool to training pool); items below a
threshold (default: the 5th percentile of the training examples' leave-one-out nearest-neighbour similarity)
are flagged, because the distilled encoder's scores are unvalidated there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .embed import encode_sorted, normalise
from ..student.loading import encoder_metadata
from ..core.errors import UserError
from .index import exact_search
from ..data.records import PRESETS, DataSpec, FieldSpec, Record, read_records

__all__ = ["OODConfig", "find_reference_data", "build_references", "ood_report"]


# ---------------------------------------------------------------------------------------------- OOD


@dataclass
class OODConfig:
    """How items are compared with the encoder's training distribution."""

    reference: list[str] = field(default_factory=list)
    """Reference records files (the encoder's training data); default: found in the encoder's metadata."""
    reference_preset: str | None = None
    """Field mapping preset of the --reference files (ignored for files named by the encoder metadata)."""
    threshold: float | None = None
    """Flag items whose nearest-neighbour cosine to the reference is below this (default: calibrated)."""
    quantile: float = 0.05
    """Calibration: the threshold is this quantile of the reference's leave-one-out NN similarities."""
    max_reference: int = 5000
    """Most reference examples embedded per side (the first ones in file order)."""
    enabled: bool = True
    """Compute the OOD report at all."""


def _walk(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{prefix}{k}", v
            yield from _walk(v, f"{prefix}{k}.")


def find_reference_data(meta: dict) -> dict[str, list[tuple[str, FieldSpec]]]:
    """The encoder's training data files named by its metadata: ``{"pool": [...], "query": [...]}``.

    Uses the typed data specs saved with the encoder (``data_specs``: path + field mapping, see
    :class:`influcoder.data.records.DataSpec`) when present. Otherwise looks (at any depth) for ``pool_data`` /
    ``query_data`` entries: a data spec (a training config's ``pool_data: {path, preset, …}``), or a path read
    with the field mapping of its sibling entries: ``<side>_fields``, or ``<side>_preset`` /
    ``<side>_prompt_field`` / ``<side>_response_field`` / ``<side>_id_field`` (older encoders' training configs)."""

    found: dict[str, list[tuple[str, FieldSpec]]] = {"pool": [], "query": []}
    specs = meta.get("data_specs")
    if isinstance(specs, dict):
        for side in ("pool", "query"):
            d = specs.get(side)
            if isinstance(d, dict) and d.get("path") and Path(d["path"]).exists():
                try:
                    found[side].append((d["path"], DataSpec(**d).field_spec()))
                except (TypeError, UserError):
                    pass
        if found["pool"] or found["query"]:
            return found
    flat = dict(_walk(meta))
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        for side in ("pool", "query"):
            if leaf == f"{side}_data" and isinstance(value, dict) and isinstance(value.get("path"), str):
                try:  # a training config's data spec (pool_data: {path, preset, prompt_field, ...})
                    d = DataSpec(**value)
                    spec = d.field_spec()
                except (TypeError, UserError):
                    continue
                if d.path and Path(d.path).exists() and d.path not in [p for p, _ in found[side]]:
                    found[side].append((d.path, spec))
                continue
            if leaf in (f"{side}_data", f"{side}_data_path") and isinstance(value, str) and value:
                parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
                spec = FieldSpec()
                fields = flat.get(f"{parent}{side}_fields")
                names = {k: flat.get(f"{parent}{side}_{k}_field") for k in ("prompt", "response", "id")}
                preset = flat.get(f"{parent}{side}_preset")
                preset = preset if isinstance(preset, str) and preset in PRESETS else None
                if isinstance(fields, dict):
                    try:
                        spec = FieldSpec(**{k: tuple(v) if k == "prompt" else v for k, v in fields.items()})
                    except TypeError:
                        spec = FieldSpec()
                elif preset or any(isinstance(v, str) and v for v in names.values()):
                    spec = FieldSpec.from_names(**{k: v if isinstance(v, str) and v else None for k, v in names.items()},
                                                preset=preset)
                if Path(value).exists() and value not in [p for p, _ in found[side]]:
                    found[side].append((value, spec))
    return found


class _Reference:
    """Reference embeddings of one side, with its calibrated threshold."""

    def __init__(self, emb: np.ndarray, ids: list[str], sources: list[str], quantile: float, threshold: float | None):
        self.emb = emb
        self.ids = ids
        self.sources = sources
        self.loo = None
        if len(emb) >= 2:
            s, _ = exact_search(emb, emb, 2)
            self.loo = s[:, 1]  # nearest other reference example (column 0 is itself)
        if threshold is not None:
            self.threshold, self.calibrated = float(threshold), False
        elif self.loo is not None:
            self.threshold, self.calibrated = float(np.quantile(self.loo, quantile)), True
        else:
            self.threshold, self.calibrated = None, False

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
        # vectors of an encoder with a pool prior carry one score coordinate after the embedding: the
        # nearest-neighbour similarity is the cosine of the embeddings alone
        x = normalise(np.asarray(x, dtype=np.float32)[:, : self.emb.shape[1]])
        s, i = exact_search(x, self.emb, 1)
        return s[:, 0], [self.ids[j] for j in i[:, 0]]

    def summary(self) -> dict:
        return {"files": self.sources, "n": len(self.ids), "threshold": self.threshold, "calibrated": self.calibrated,
                "loo_nn_similarity_median": float(np.median(self.loo)) if self.loo is not None else None}


def build_references(encoder, ood: OODConfig, batch_size: int) -> tuple[dict[str, _Reference], str | None]:
    if not ood.enabled:
        return {}, "OOD report disabled"
    if ood.reference:
        spec = DataSpec(preset=ood.reference_preset).field_spec()  # an unknown preset is refused here
        files = {"pool": [(p, spec) for p in ood.reference], "query": [(p, spec) for p in ood.reference]}
    else:
        files = find_reference_data(encoder_metadata(encoder))
    if not files["pool"] and not files["query"]:
        return {}, ("no reference data: the encoder's metadata names no training data files that exist here "
                    "(pool_data / query_data); pass --reference FILE to get the OOD report")
    files = {"pool": files["pool"] or files["query"], "query": files["query"] or files["pool"]}
    refs = {}
    for side, sources in files.items():
        items: list[Record] = []
        for path, spec in sources:
            recs, _ = read_records(path, spec, skip_invalid=True, limit=ood.max_reference - len(items))
            items += recs
            if len(items) >= ood.max_reference:
                break
        emb = encode_sorted(encoder, items, batch_size=batch_size, side=side)
        emb = emb[:, : getattr(encoder, "embedding_dim", emb.shape[1])]  # the cosine part (no prior coordinate)
        refs[side] = _Reference(normalise(emb), [r.id for r in items], [p for p, _ in sources], ood.quantile, ood.threshold)
    return refs, None


def ood_report(refs: dict[str, _Reference], side: str, ids: list[str], emb: np.ndarray) -> list[dict]:
    """Per item: nearest-neighbour similarity to the reference of ``side``, nearest reference id, flag."""
    if side not in refs:
        return [{"side": side, "id": i, "nn_similarity": None, "nearest_reference_id": None, "ood": None} for i in ids]
    ref = refs[side]
    out = []
    for a in range(0, len(ids), 4096):
        s, nn = ref.nearest(emb[a : a + 4096])
        for i, sim, r in zip(ids[a : a + 4096], s, nn):
            out.append({"side": side, "id": i, "nn_similarity": float(sim), "nearest_reference_id": r,
                        "ood": bool(ref.threshold is not None and sim < ref.threshold)})
    return out
