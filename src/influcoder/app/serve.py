"""``influcoder serve``: an explorer page and a JSON API over a run folder or an index folder.

``create_app(path)`` loads the encoder, the FAISS index, the OOD reference and (for a run, or with
``queries``) the reference queries' aggregate scores once, and returns a FastAPI app:

* ``GET /api/info`` — what is served: source, pool size, the run's queries, the score histogram.
* ``GET /api/attribute?text=...&k=10`` (or ``query_id=``) — the top-k pool examples for one query,
  ranked, each ``{rank, id, score, prompt, response, ood, ...}`` and, where the run holds the teacher's
  labels for the pair, ``teacher_rank`` / ``teacher_score``. Computed by :func:`influcoder.search.attribute.run_attribute`.
* ``GET /api/filter?fraction=...`` or ``threshold=...`` — counts and selected ids of the pool scored by
  influence aggregated over the reference queries (:func:`influcoder.search.filter.filter_pool`'s scores,
  :func:`influcoder.search.filter.select_examples`'s selection).
* ``GET /api/export`` (same parameters) — the filtered data set as JSONL in the pool's original fields.
* ``GET /`` — the page (``influcoder/static``); ``GET /report/`` — the run's fidelity report.

Bad requests get HTTP 4xx with ``{"error": "..."}``; a folder that is neither a run nor an index is a
:class:`ServeError` when the app is made (the CLI prints it on one line and exits 2).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import UserError
from ..data.records import DataSpec, Record, iter_rows, record_to_text
from ..search.ood import OODConfig
from ..run.layout import MANIFEST as RUN_MANIFEST, RUN_FORMAT, RunLayout

__all__ = ["ServeConfig", "ServeError", "ServeSource", "Explorer", "resolve_source", "create_app", "RUN_FORMAT", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")
MAX_K = 1000


@dataclass
class ServeConfig:
    """``influcoder serve PATH``: how the explorer is served (the folder itself is the command's argument)."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    queries: DataSpec = field(default_factory=DataSpec)
    """Reference queries records file and how to read it (for an index folder, or instead of the run's)."""
    aggregate: str = "mean"
    """mean | max: how the filter aggregates scores over the queries."""
    batch_size: int = 64
    """Encoder batch size."""
    ood: OODConfig = field(default_factory=OODConfig)
    """OOD flags (influcoder.search.ood.OODConfig; default reference: from the encoder's metadata)."""
    device: str = "auto"
    """Encoder device: auto (CUDA when present), cpu, cuda, cuda:N."""
    precision: str = "auto"
    """Encoder precision: auto (bf16 where native), float32, bfloat16."""

    def __post_init__(self):
        self.queries = DataSpec.of(self.queries)
        if self.aggregate not in ("mean", "max"):
            raise ServeError("aggregate must be mean or max")


class ServeError(UserError):
    """A folder that cannot be served (not a run or an index, or a run missing the steps serving needs)."""


class ApiError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------------------- sources


@dataclass
class ServeSource:
    """What ``influcoder serve`` found in the folder it was given."""

    kind: str
    """``run`` or ``index``."""
    root: Path
    encoder: str
    index: Path
    embeddings: Path | None
    """Embedding store of the whole pool (the filter's scores come from it)."""
    pool: str
    """Pool records file (texts and export)."""
    queries: DataSpec | None = None
    """Reference queries: a records file and how to read it."""
    labels: Path | None = None
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def _data_spec(spec, what: str, manifest: Path) -> DataSpec | None:
    """A run manifest's data spec (its path made absolute)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"path": spec}
    if not isinstance(spec, dict) or not spec.get("path"):
        raise ServeError(f"{manifest}: '{what}' must be a data spec with a 'path'")
    try:
        d = DataSpec(**{**spec, "path": str(RunLayout(manifest.parent).resolve(spec["path"]))})
        d.field_spec()
    except (UserError, TypeError) as e:
        raise ServeError(f"{manifest}, '{what}': {e}") from None
    return d


def resolve_source(path: str | Path, *, queries: DataSpec | str | None = None) -> ServeSource:
    """Find encoder, index, embeddings, pool, queries, labels and report of a run or index folder.

    ``queries`` (a data spec, or a path read with the default fields) names the reference queries for an index
    folder, or replaces a run's."""
    from ..core.fileio import read_manifest
    from ..search.index import IndexError_, open_index

    root = Path(path)
    if not root.exists():
        raise ServeError(f"{root}: no such folder")
    if not root.is_dir():
        raise ServeError(f"{root}: not a folder; give a run folder (influcoder run) or an index folder (influcoder index)")
    notes: list[str] = []
    layout = RunLayout(root)
    if layout.manifest.exists():
        mpath = layout.manifest
        m = read_manifest(root, RUN_MANIFEST, RUN_FORMAT, ServeError, "run", "")
        steps = m.get("steps_done") or []

        def need(key: str, what: str) -> Path:
            p = layout.resolve(m.get(key))
            if p is None:
                raise ServeError(f"{mpath}: no {what} yet ('{key}' is null; steps done: {', '.join(steps) or 'none'}); "
                                 "finish the run first")
            if not p.exists():
                raise ServeError(f"{mpath}: the {what} {p} named by '{key}' does not exist")
            return p

        encoder = need("encoder", "encoder")
        index_dir = need("index", "index")
        try:
            meta = open_index(index_dir).meta
        except IndexError_ as e:
            raise ServeError(f"{mpath}, 'index': {e}") from None
        emb = layout.resolve(m.get("embeddings")) or layout.resolve(meta.get("embeddings", {}).get("path"))
        pool = _data_spec(m.get("pool"), "pool", mpath)
        q_spec = _data_spec(m.get("queries"), "queries", mpath)
        labels = layout.resolve(m.get("labels"))
        if labels is not None and not labels.exists():
            notes.append(f"the run's labels {labels} do not exist: no teacher ranks")
            labels = None
        report = layout.resolve(m.get("report"))
        if report is not None and not report.exists():
            notes.append(f"the run's fidelity report {report} does not exist")
            report = None
        src = ServeSource("run", root, str(encoder), index_dir, emb, pool.path if pool else meta["data"]["path"],
                          q_spec, labels, report, notes)
    elif (root / "index_meta.json").exists():
        try:
            meta = open_index(root).meta
        except IndexError_ as e:
            raise ServeError(str(e)) from None
        enc = meta["encoder"]
        encoder = enc["path"] if enc.get("path") and Path(enc["path"]).is_dir() else enc["name"]
        emb = meta.get("embeddings", {}).get("path")
        src = ServeSource("index", root, encoder, root, Path(emb) if emb else None, meta["data"]["path"], notes=notes)
    else:
        raise ServeError(f"{root}: neither a run folder ({RUN_MANIFEST}) nor an index folder (index_meta.json); "
                         "give the folder written by `influcoder run` or `influcoder index --out`")
    queries = DataSpec.of(queries)
    if queries.path:
        queries.field_spec()  # an unknown preset is refused here
        src.queries = queries
    if not Path(src.pool).exists():
        raise ServeError(f"{root}: the pool data {src.pool} does not exist (texts and export need it)")
    if src.embeddings is not None and not src.embeddings.exists():
        notes.append(f"the pool's embedding store {src.embeddings} does not exist: no filter")
        src.embeddings = None
    if src.queries is None:
        notes.append("no reference queries (an index folder names none; pass --queries): no filter, histogram or export")
    elif not Path(src.queries.path).exists():
        raise ServeError(f"{root}: the queries file {src.queries.path} does not exist")
    return src


# ------------------------------------------------------------------------------------------- explorer


class Explorer:
    """The loaded state behind the app: encoder, index, OOD reference, queries, aggregate scores, labels."""

    def __init__(self, source: ServeSource, *, aggregate: str = "mean", batch_size: int = 64, ood=None,
                 device: str = "auto", precision: str = "auto"):
        from ..search.ood import build_references
        from ..student.loading import encoder_fingerprint, load_encoder
        from ..search.index import open_index

        self.source = source
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.ood = ood if ood is not None else OODConfig()
        self.lock = threading.Lock()  # one encoder / index call at a time
        self.encoder = load_encoder(source.encoder, device=device, precision=precision, stage="serve")
        self.fingerprint = encoder_fingerprint(source.encoder)["sha256"]
        self.index = open_index(source.index)
        self.index.require_encoder(self.fingerprint, f"the encoder {source.encoder}")
        self.references = build_references(self.encoder, self.ood, batch_size)
        self.notes = list(source.notes)
        self.trust = self._trust()
        if self.references[1]:
            self.notes.append(self.references[1])

        self.query_ids: list[str] = []
        self.query_texts: list[str] = []
        self.query_records: dict[str, Record] = {}
        if source.queries:
            recs, _ = source.queries.read()
            self.query_ids = [r.id for r in recs]
            self.query_texts = [record_to_text(r) for r in recs]  # what the page shows
            self.query_records = {r.id: r for r in recs}  # what the encoder reads (the response kept)
        self.query_by_text = {t: i for i, t in reversed(list(zip(self.query_ids, self.query_texts)))}
        self.query_text_of = dict(zip(self.query_ids, self.query_texts))

        self.scores = None
        if source.queries and source.embeddings is not None:
            self._score_pool()

        self.labels = None
        if source.labels is not None:
            from ..teacher.labels import load_labels

            try:
                self.labels = load_labels(source.labels)
            except (OSError, ValueError, KeyError) as e:
                self.notes.append(f"labels {source.labels} unreadable ({e}): no teacher ranks")
        if self.labels is not None:
            self.label_row = {pid: i for i, pid in enumerate(self.labels.pool_ids)}
            self.label_col = {qid: j for j, qid in enumerate(self.labels.query_ids)}

    def _trust(self) -> dict:
        """The run's verdict (report/fidelity.json beside the report), shown beside every score the page lists."""
        from ..run.report import trust_summary

        rep = self.source.report
        js = rep.with_suffix(".json") if rep is not None else None
        if js is None or not js.is_file():
            return trust_summary(None)
        try:
            return trust_summary(json.loads(js.read_text()))
        except (OSError, ValueError, KeyError) as e:
            self.notes.append(f"fidelity report {js} unreadable ({e})")
            return trust_summary(None)

    # --- aggregate scores (the filter's own code, run once into a scratch folder)
    def _score_pool(self) -> None:
        from ..search.filter import FilterConfig, filter_pool
        from ..search.embed import open_embeddings

        src = self.source
        store = open_embeddings(src.embeddings)
        scratch = Path(tempfile.mkdtemp(prefix="influcoder-serve-"))
        try:
            cfg = FilterConfig(encoder=src.encoder, out=str(scratch), data=src.pool, pool_embeddings=str(src.embeddings),
                               queries=src.queries, aggregate=self.aggregate, batch_size=self.batch_size, ood=self.ood)
            filter_pool(cfg, encoder=self.encoder, progress=False, references=self.references)
            ranked = [json.loads(line) for line in (scratch / "ranked.jsonl").read_text().splitlines()]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        pos = {pid: i for i, pid in enumerate(store.ids)}
        n = len(store)
        self.pool_ids = list(store.ids)
        self.pool_rows = store.rows.astype(np.int64)
        self.scores = np.empty(n, dtype=np.float64)
        self.pool_ood = [None] * n
        for r in ranked:
            i = pos[r["id"]]
            self.scores[i] = r["score"]
            self.pool_ood[i] = r["ood"]

    # --- attribution
    def attribute(self, *, text: str | None = None, query_id: str | None = None, k: int = 10) -> dict:
        from ..search.attribute import AttributeConfig, records_for_rows, run_attribute

        if (text is None) == (query_id is None):
            raise ApiError(400, "give either text=... or query_id=..., not both" if text is not None
                           else "give a query: text=... or query_id=...")
        n = len(self.index)
        if not 1 <= k <= min(n, MAX_K):
            raise ApiError(400, f"k must be between 1 and {min(n, MAX_K)} (the pool has {n} examples); got {k}")
        if query_id is not None:
            if query_id not in self.query_text_of:
                raise ApiError(404, f"unknown query id '{query_id}'" + (
                    f" (this run's queries: {', '.join(self.query_ids[:5])}{', ...' if len(self.query_ids) > 5 else ''})"
                    if self.query_ids else " (no reference queries are served)"))
            text = self.query_text_of[query_id]
        elif not text.strip():
            raise ApiError(400, "the query text is empty")
        else:
            query_id = self.query_by_text.get(text)
        cfg = AttributeConfig(encoder=self.source.encoder, index=str(self.source.index), query_texts=[text], top_k=k,
                              data=self.source.pool, with_text=False, batch_size=self.batch_size, ood=self.ood)
        # one of the run's queries is scored as the record it is (the encoder keeps its response); typed text as text
        known = self.query_records.get(query_id) if query_id is not None and text == self.query_text_of.get(query_id) else None
        with self.lock:
            recs, summary = run_attribute(cfg, encoder=self.encoder, index=self.index, fingerprint=self.fingerprint,
                                          references=self.references, query_records=[known] if known else None)
        records, note = records_for_rows(self.source.pool, self.index.meta["fields"], {r["row"]: r["id"] for r in recs})
        teacher = self._teacher(query_id)
        results = []
        for r in recs:
            rec: Record | None = records.get(r["row"])
            item = {"rank": r["rank"], "id": r["id"], "score": r["score"], "row": r["row"],
                    "prompt": rec.prompt if rec else None, "response": rec.response if rec else None,
                    "ood": r["pool_ood"], "nn_similarity": r["pool_nn_similarity"]}
            if teacher is not None:
                i = self.label_row.get(r["id"])
                item["teacher_rank"] = int(teacher["rank"][i]) if i is not None else None
                item["teacher_score"] = float(teacher["col"][i]) if i is not None else None
            results.append(item)
        q = summary["query_ood"][0]
        return {
            "query": {"id": query_id, "text": text, "ood": q["ood"], "nn_similarity": q["nn_similarity"]},
            "k": k,
            "n_pool": n,
            "teacher": None if teacher is None else {"n_labelled": len(self.labels.pool_ids), "query_id": query_id},
            "results": results,
            "trust": self.trust,
            "notes": summary["notes"] + ([note] if note else []),
        }

    def _teacher(self, query_id: str | None):
        if self.labels is None or query_id is None or query_id not in self.label_col:
            return None
        col = np.asarray(self.labels.matrix[:, self.label_col[query_id]], dtype=np.float64)
        order = np.lexsort((np.arange(len(col)), -col))
        rank = np.empty(len(col), dtype=np.int64)
        rank[order] = np.arange(1, len(col) + 1)
        return {"col": col, "rank": rank}

    # --- filter / export
    def _need_scores(self) -> None:
        if self.scores is None:
            why = ("no reference queries" if not self.source.queries else "no embedding store of the pool")
            raise ApiError(404, f"filtering needs the run's reference queries and pool embeddings: {why} here"
                           + (" (pass --queries to influcoder serve)" if not self.source.queries else ""))

    def select(self, fraction: float | None = None, threshold: float | None = None, keep: bool = False):
        from ..search.filter import select_examples

        self._need_scores()
        if fraction is not None and threshold is not None:
            raise ApiError(400, "give either fraction=... or threshold=..., not both")
        if fraction is not None and not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ApiError(400, f"fraction must be between 0 and 1; got {fraction}")
        if threshold is not None and not math.isfinite(threshold):
            raise ApiError(400, f"threshold must be a finite number; got {threshold}")
        if fraction is None and threshold is None:
            fraction = 0.1  # as influcoder filter
        return select_examples(self.scores, threshold, fraction if fraction is not None else 0.0, keep), fraction, threshold

    def filter(self, fraction: float | None = None, threshold: float | None = None, keep: bool = False,
               with_ids: bool = True) -> dict:
        (order, selected, kept), fraction, threshold = self.select(fraction, threshold, keep)
        sel = order[selected[order]]
        out = {
            "n_pool": int(len(self.scores)),
            "n_queries": len(self.query_ids),
            "aggregate": self.aggregate,
            "selection": {"threshold": threshold} if threshold is not None else {"fraction": fraction},
            "mode": "keep" if keep else "remove",
            "n_selected": int(selected.sum()),
            "n_kept": int(kept.sum()),
            "min_selected_score": float(self.scores[sel[-1]]) if len(sel) else None,
            "trust": self.trust,
        }
        if with_ids:
            out["selected_ids"] = [self.pool_ids[i] for i in sel]
        return out

    def export_lines(self, fraction: float | None = None, threshold: float | None = None, keep: bool = False) -> Iterator[str]:
        (_, _, kept), _, _ = self.select(fraction, threshold, keep)
        keep_rows = set(self.pool_rows[kept].tolist())

        def lines():
            for row, obj in iter_rows(self.source.pool):
                if row in keep_rows:
                    yield json.dumps(obj, ensure_ascii=False, default=str) + "\n"

        return lines()

    def histogram(self, bins: int = 40) -> dict | None:
        if self.scores is None:
            return None
        counts, edges = np.histogram(self.scores, bins=bins)
        return {"counts": counts.tolist(), "edges": edges.tolist(), "min": float(self.scores.min()),
                "max": float(self.scores.max()), "p90": float(np.quantile(self.scores, 0.9))}

    def info(self) -> dict:
        src = self.source
        return {
            "kind": src.kind,
            "root": str(src.root),
            "encoder": src.encoder,
            "index": str(src.index),
            "pool": src.pool,
            "n_pool": len(self.index),
            "queries": [{"id": i, "text": t} for i, t in zip(self.query_ids, self.query_texts)],
            "aggregate": self.aggregate,
            "histogram": self.histogram(),
            "has_labels": self.labels is not None,
            "labelled_queries": sorted(self.label_col, key=self.label_col.get) if self.labels is not None else [],
            "report": "/report/" if src.report is not None else None,
            "report_figure": ("/report/fidelity.png" if src.report is not None
                              and (src.report.parent / "fidelity.png").is_file() else None),
            "trust": self.trust,
            "ood_reference": {k: v.summary() for k, v in self.references[0].items()},
            "max_k": min(len(self.index), MAX_K),
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------------ app


def create_app(path: str | Path | None = None, *, explorer: Explorer | None = None, aggregate: str = "mean",
               batch_size: int = 64, ood=None, device: str = "auto", precision: str = "auto", **source_options):
    """The FastAPI app serving ``path`` (a run or index folder; ``source_options`` as :func:`resolve_source`)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if aggregate not in ("mean", "max"):
        raise ServeError("aggregate must be mean or max")
    if explorer is None:
        if path is None:
            raise ServeError("give the folder to serve")
        explorer = Explorer(resolve_source(path, **source_options), aggregate=aggregate, batch_size=batch_size, ood=ood,
                            device=device, precision=precision)
    ex = explorer

    app = FastAPI(title="influcoder explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = ex

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "query")
            msgs.append(f"parameter '{loc}': {e.get('msg')}" + (f" (got {e['input']!r})" if "input" in e else ""))
        return JSONResponse({"error": "; ".join(msgs)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if exc.status_code != 404 or request.url.path.startswith("/report") else f"no such page: {request.url.path}"
        return JSONResponse({"error": msg}, status_code=exc.status_code)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info")
    def info():
        return ex.info()

    @app.get("/api/attribute")
    def attribute(text: str | None = Query(None, description="Query text."),
                  query_id: str | None = Query(None, description="Id of one of the run's queries."),
                  k: int = Query(10, description="Pool examples returned.")):
        return ex.attribute(text=text, query_id=query_id, k=k)

    @app.get("/api/filter")
    def filter_(fraction: float | None = None, threshold: float | None = None, keep: bool = False, ids: bool = True):
        return ex.filter(fraction, threshold, keep, with_ids=ids)

    @app.get("/api/export")
    def export(fraction: float | None = None, threshold: float | None = None, keep: bool = False):
        lines = ex.export_lines(fraction, threshold, keep)  # validates before the response starts
        t = ex.trust
        verdict = t["word"] + (f" (held-out per-anchor Spearman {t['per_anchor']:.3f} vs {t['baseline_per_anchor']:.3f} "
                               f"for the {t['baseline']} baseline)" if t["per_anchor"] is not None else "")
        # the file stays the data set, row for row; the verdict of the scores that chose it travels in a header
        return StreamingResponse(lines, media_type="application/x-ndjson",
                                 headers={"Content-Disposition": 'attachment; filename="filtered.jsonl"',
                                          "X-Influcoder-Verdict": verdict})

    @app.get("/report", include_in_schema=False)
    def report_redirect():
        return RedirectResponse("/report/")

    @app.get("/report/", include_in_schema=False)
    def report():
        rep = ex.source.report
        if rep is None:
            raise ApiError(404, "this run has no fidelity report")
        if rep.suffix.lower() != ".md":
            return FileResponse(rep)
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(rep.read_text(encoding="utf-8"))
        return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>Fidelity report</title>"
                            f"<link rel='stylesheet' href='/static/style.css'></head><body class='report'>"
                            f"<p><a href='/'>← explorer</a></p>{body}</body></html>")

    @app.get("/report/{name}", include_in_schema=False)
    def report_file(name: str):
        rep = ex.source.report
        if rep is None:
            raise ApiError(404, "this run has no fidelity report")
        f = rep.parent / name
        if "/" in name or "\\" in name or name.startswith(".") or not f.is_file():
            raise ApiError(404, f"no file '{name}' beside the fidelity report")
        return FileResponse(f)

    return app
