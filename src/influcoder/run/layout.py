"""The run folder, defined once: where each step writes, the step records, the resolved config and the run
manifest (``run_manifest.json``) that ``influcoder serve`` and any other reader start from.

::

    RUN/config.yaml            the resolved RunConfig (replayable: influcoder run RUN/config.yaml)
    RUN/run_manifest.json      format, scorer, data specs and the relative path of every finished artefact
    RUN/steps/<step>.json      a finished step: its key, resolved section, seconds, info
    RUN/steps/<step>.started.json   a step begun (its key), removed when it finishes
    RUN/<folder of each step>  OUTPUTS below (data/, sample/, stores/, labels/, encoder/, exact_query/,
                               embeddings/, index/, attribution/, filter/, report/)
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RunLayout", "MANIFEST", "RUN_FORMAT", "OUTPUTS", "ARTEFACTS"]

MANIFEST = "run_manifest.json"
RUN_FORMAT = "influcoder-run/1"
CONFIG = "config.yaml"
OUTPUTS = {
    "mix": ("data",), "sample": ("sample",), "stock": ("stores",), "labels": ("labels",), "train": ("encoder",),
    "exact_query": ("exact_query",), "embed": ("embeddings",), "index": ("index",), "attribute": ("attribution",),
    "filter": ("filter",), "report": ("report",),
}
"""The folders each step writes (a step is up to date only while they exist)."""
ARTEFACTS = {
    "embeddings": ("embed", "embeddings"),
    "index": ("index", "index"),
    "labels": ("labels", "labels/labels.npy"),
    "report": ("report", "report/fidelity.md"),
    "attribution": ("attribute", "attribution/attribution.jsonl"),
    "filter": ("filter", "filter"),
    "exact_query": ("exact_query", "exact_query"),
    "sample": ("sample", "sample/split.json"),
}
"""Manifest key → (the step that makes it, its path in the run folder); ``encoder`` depends on the scorer
(:meth:`RunLayout.scorer`)."""
SCORER_FOLDERS = {"student": ("train", "encoder"), "exact-query": ("exact_query", "exact_query/model")}
"""The encoder folder each scorer's embed / attribute / filter load, and the step that writes it."""


class RunLayout:
    """The paths of one run folder (nothing here runs a step)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def config(self) -> Path:
        return self.path(CONFIG)

    @property
    def manifest(self) -> Path:
        return self.path(MANIFEST)

    def step_record(self, step: str, started: bool = False) -> Path:
        return self.path("steps", f"{step}.started.json" if started else f"{step}.json")

    def record(self, step: str) -> dict | None:
        """The completion record of ``step`` (None when it never finished)."""
        p = self.step_record(step)
        return json.loads(p.read_text()) if p.exists() else None

    def scorer(self, scorer: str) -> Path:
        """The encoder folder the scorer's embed, attribute and filter load: encoder/ or exact_query/model."""
        return self.path(SCORER_FOLDERS[scorer][1])

    def manifest_entries(self, scorer: str, done: list[str]) -> dict[str, str | None]:
        """The artefact entries of the run manifest: each finished artefact's path relative to the run folder."""
        def have(step: str, rel: str) -> str | None:
            return rel if step in done and self.path(rel).exists() else None

        step, rel = SCORER_FOLDERS[scorer]
        return {"encoder": have(step, rel), **{k: have(s, r) for k, (s, r) in ARTEFACTS.items()}}

    def resolve(self, value: str | None) -> Path | None:
        """A manifest entry as a path (relative entries are relative to the run folder)."""
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.root / p
