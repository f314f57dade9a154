"""``influcoder embed``, ``influcoder index``, ``influcoder attribute`` and ``influcoder filter``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

console = Console(stderr=True)


class _OptionalRayValue(TyperCommand):
    """Lets ``--ray`` be given without a value (``--ray`` alone = RAY_ADDRESS or a local instance):
    a bare ``--ray`` (last, or followed by another option) gets the value ``local``."""

    def parse_args(self, ctx, args):
        fixed = []
        for i, a in enumerate(args):
            fixed.append(a)
            if a == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                fixed.append("local")
        return super().parse_args(ctx, fixed)


# --ray options shared by `embed` and `filter`
_RAY = typer.Option(None, "--ray", metavar="[ADDRESS]",
                    help="Run on Ray Data: a cluster ADDRESS (host:6379, ray://host:10001, auto) or, "
                         "with no value, RAY_ADDRESS or a local instance. Needs pip install influcoder[ray].")
_RAY_ACTORS = typer.Option(2, "--ray-actors", help="With --ray: encoder actors (one model load each).")
_RAY_CPUS = typer.Option(1.0, "--ray-cpus", help="With --ray: CPUs per encoder actor.")
_RAY_GPUS = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per encoder actor (0 = CPU).")
_RAY_BATCH_ROWS = typer.Option(1024, "--ray-batch-rows", help="With --ray: rows per map_batches call.")


def register(app: typer.Typer) -> None:
    app.command("embed", cls=_OptionalRayValue)(_embed_command())
    app.command("index")(_index_command())
    app.command("attribute")(attribute_cmd)
    app.command("filter", cls=_OptionalRayValue)(filter_cmd)


def _require_file(path, flag: str) -> None:
    from ..core.errors import UserError
    from ..data.records import is_datasets_folder

    if path is not None and not Path(path).is_file() and not is_datasets_folder(path):
        raise UserError(f"{path}: {flag} file not found" if not Path(path).exists() else
                        f"{path}: {flag} is a folder, expected a records file (.jsonl/.json/.csv/.parquet)")


def _embed(values: dict, extras: dict):
    from ..search.embed import EmbedConfig, embed_file, open_embeddings

    _require_file(values["data"], "--data")
    cfg = EmbedConfig(**values, dtype="float32" if extras["float32"] else "float16")
    if extras["ray"] is not None:
        from ..search.ray_backend import embed_with_ray

        rcfg = _ray_cfg(extras["ray"], extras["ray_actors"], extras["ray_cpus"], extras["ray_gpus"], extras["ray_batch_rows"])
        path = embed_with_ray(cfg, rcfg)
    else:
        path = embed_file(cfg, progress=not extras["quiet"])
    s = open_embeddings(path)
    st = s.manifest.get("stats", {})
    console.print(f"embedded {len(s)} × {s.dim} ({s.manifest['dtype']}) into {path} "
                  f"({st.get('examples_per_s_last_run') or 0:.1f} ex/s, {st.get('bytes_per_example')} bytes/example)")
    if st.get("n_invalid"):
        console.print(f"[yellow]{st['n_invalid']} invalid rows skipped; see {path / 'invalid.jsonl'}[/]")


def _param(name, annotation, option):
    import inspect

    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def _embed_command():
    """``influcoder embed``: flags generated from :class:`influcoder.embed.EmbedConfig`'s fields, but
    ``dtype``, whose flag stays ``--float32`` (float16 otherwise)."""
    from ..core.config import command_from
    from ..search.embed import EmbedConfig

    extra = [_param("float32", bool, typer.Option(False, "--float32", help="Store float32 instead of float16 (the dtype field).")),
             _param("quiet", bool, typer.Option(False, "--quiet", help="No progress bar.")),
             _param("ray", Optional[str], _RAY), _param("ray_actors", int, _RAY_ACTORS), _param("ray_cpus", float, _RAY_CPUS),
             _param("ray_gpus", float, _RAY_GPUS), _param("ray_batch_rows", int, _RAY_BATCH_ROWS)]
    return command_from(EmbedConfig, _embed, exclude=("dtype",), extra=extra,
                        shown=("encoder", "data", "out", "preset", "device", "precision", "batch_size"), doc=(
        "Embed a records file with an influence encoder into a sharded, resumable store (or Parquet shards on Ray)."))


def _index(values: dict, extras: dict):
    from ..search.index import IndexConfig, build_index, open_index

    cfg = IndexConfig(**values)
    path = build_index(cfg)
    meta = open_index(path).meta
    console.print(f"indexed {meta['n']} × {meta['dim']} ({cfg.kind}) in {meta['build_seconds']:.1f} s → {path} "
                  f"({meta['index_bytes'] / max(1, meta['n']):.0f} bytes/vector)")
    if meta.get("check"):
        c = meta["check"]
        print(json.dumps(c))
        console.print(f"recall@{c['k']} vs exact on {c['queries']} sampled vectors: {c['recall']:.4f} "
                      f"({c['index_ms_per_query_batched']:.3f} ms/query vs exact {c['exact_ms_per_query_batched']:.3f})")


def _index_command():
    """``influcoder index``: flags generated from :class:`influcoder.index.IndexConfig`'s fields."""
    from ..core.config import command_from
    from ..search.index import IndexConfig

    return command_from(IndexConfig, _index, doc="Build a FAISS inner-product index over an embedding store.")


def _ray_cfg(address, actors, cpus, gpus, batch_rows):
    from ..search.ray_backend import RayConfig

    return RayConfig(address=address, num_actors=actors, cpus_per_actor=cpus, gpus_per_actor=gpus,
                     rows_per_batch=batch_rows)


def _ood_opts(reference, reference_preset, ood_threshold, no_ood):
    from ..search.attribute import OODConfig

    return OODConfig(reference=[str(p) for p in reference or []], reference_preset=reference_preset,
                     threshold=ood_threshold, enabled=not no_ood)


def attribute_cmd(
    encoder: str = typer.Option(..., "--encoder", help="The encoder the index was built with."),
    index: Path = typer.Option(..., "--index", help="Index folder (influcoder index --out)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries records file (or a query embedding store)."),
    query_text: Optional[List[str]] = typer.Option(None, "--query-text", help="A query as text (repeatable)."),
    top_k: int = typer.Option(10, "--top-k", help="Pool examples per query."),
    out: Path = typer.Option(..., "--out", help="Output file: JSONL (CSV with --csv); a .report.json goes beside it."),
    as_csv: bool = typer.Option(False, "--csv", help="Write CSV instead of JSONL."),
    query_preset: Optional[str] = typer.Option(None, "--query-preset", help="Field mapping of the queries file (e.g. bbh)."),
    query_prompt_field: Optional[str] = typer.Option(None, "--query-prompt-field"),
    query_response_field: Optional[str] = typer.Option(None, "--query-response-field"),
    data: Optional[Path] = typer.Option(None, "--data", help="Pool file to read texts from (default: the indexed file)."),
    no_text: bool = typer.Option(False, "--no-text", help="Leave texts out."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="Override the IVF nprobe."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="Override the HNSW efSearch."),
    batch_size: int = typer.Option(64, "--batch-size"),
    reference: Optional[List[Path]] = typer.Option(None, "--reference", help="Encoder training data for the OOD report (default: from the encoder's metadata)."),
    reference_preset: Optional[str] = typer.Option(None, "--reference-preset"),
    ood_threshold: Optional[float] = typer.Option(None, "--ood-threshold", help="Flag NN similarity below this (default: calibrated 5th percentile)."),
    no_ood: bool = typer.Option(False, "--no-ood", help="Skip the OOD report."),
):
    """Top-k most influential pool examples for each query."""
    from ..search.attribute import AttributeConfig, run_attribute

    cfg = AttributeConfig(encoder=encoder, index=str(index), queries=str(queries) if queries else None,
                          query_texts=list(query_text or []), top_k=top_k, out=str(out), csv=as_csv,
                          query_preset=query_preset, query_prompt_field=query_prompt_field,
                          query_response_field=query_response_field, data=str(data) if data else None,
                          with_text=not no_text, nprobe=nprobe, ef_search=ef_search, batch_size=batch_size,
                          ood=_ood_opts(reference, reference_preset, ood_threshold, no_ood))
    recs, report = run_attribute(cfg)
    console.print(f"wrote {len(recs)} rows for {report['n_queries']} queries to {out}")
    if report["ood_reference"]:
        console.print(f"{report['queries_ood']} of {report['n_queries']} queries flagged out of distribution "
                      f"(threshold {report['ood_reference']['query']['threshold']:.3f})")
    for note in report["notes"]:
        console.print(f"[yellow]{note}[/]")


def filter_cmd(
    encoder: str = typer.Option(..., "--encoder", help="Encoder folder or minilm-l6."),
    data: Optional[Path] = typer.Option(None, "--data", help="Pool records file; the filtered copy keeps its format."),
    pool_text: Optional[List[str]] = typer.Option(None, "--pool-text", help="A pool example as text (repeatable)."),
    pool_embeddings: Optional[Path] = typer.Option(None, "--pool-embeddings", help="Reuse an embedding store of --data."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Queries records file."),
    query_text: Optional[List[str]] = typer.Option(None, "--query-text", help="A query as text (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    aggregate: str = typer.Option("mean", "--aggregate", help="mean | max over the queries."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Select the top fraction (default 0.1)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Select examples scoring above this."),
    keep: bool = typer.Option(False, "--keep", help="Keep only the selected examples (default: remove them)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Field mapping of the pool file."),
    prompt_field: Optional[str] = typer.Option(None, "--prompt-field"),
    response_field: Optional[str] = typer.Option(None, "--response-field"),
    query_preset: Optional[str] = typer.Option(None, "--query-preset", help="Field mapping of the queries file."),
    query_prompt_field: Optional[str] = typer.Option(None, "--query-prompt-field"),
    query_response_field: Optional[str] = typer.Option(None, "--query-response-field"),
    float32: bool = typer.Option(False, "--float32", help="Store pool embeddings as float32."),
    batch_size: int = typer.Option(64, "--batch-size"),
    reference: Optional[List[Path]] = typer.Option(None, "--reference", help="Encoder training data for the OOD report."),
    reference_preset: Optional[str] = typer.Option(None, "--reference-preset"),
    ood_threshold: Optional[float] = typer.Option(None, "--ood-threshold"),
    no_ood: bool = typer.Option(False, "--no-ood"),
    quiet: bool = typer.Option(False, "--quiet"),
    ray: Optional[str] = _RAY,
    ray_actors: int = _RAY_ACTORS,
    ray_cpus: float = _RAY_CPUS,
    ray_gpus: float = _RAY_GPUS,
    ray_batch_rows: int = _RAY_BATCH_ROWS,
):
    """Score a pool by influence aggregated over queries; write scores, ranking and a filtered copy."""
    from ..search.attribute import FilterConfig, filter_pool

    _require_file(data, "--data")

    cfg = FilterConfig(encoder=encoder, out=str(out), data=str(data) if data else None, pool_texts=list(pool_text or []),
                       pool_embeddings=str(pool_embeddings) if pool_embeddings else None,
                       queries=str(queries) if queries else None, query_texts=list(query_text or []),
                       aggregate=aggregate, fraction=fraction, threshold=threshold, keep=keep, preset=preset,
                       prompt_field=prompt_field, response_field=response_field, query_preset=query_preset,
                       query_prompt_field=query_prompt_field, query_response_field=query_response_field,
                       dtype="float32" if float32 else "float16", batch_size=batch_size,
                       ood=_ood_opts(reference, reference_preset, ood_threshold, no_ood))
    if ray is not None:
        from ..search.ray_backend import filter_with_ray

        path = filter_with_ray(cfg, _ray_cfg(ray, ray_actors, ray_cpus, ray_gpus, ray_batch_rows))
    else:
        path = filter_pool(cfg, progress=not quiet)
    rep = json.loads((path / "report.json").read_text())
    console.print(f"scored {rep['n_pool']} pool examples over {rep['n_queries']} queries ({aggregate}); "
                  f"{rep['n_selected']} selected, {rep['n_written']} written ({rep['mode']}) → {', '.join(rep['outputs'])}")
    if rep["ood_reference"]:
        console.print(f"OOD: {rep['queries_ood']} queries and {rep['pool_ood']} pool examples flagged (see {path / 'ood.jsonl'})")
    for note in rep["notes"]:
        console.print(f"[yellow]{note}[/]")
