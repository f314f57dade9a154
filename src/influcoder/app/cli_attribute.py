"""``influcoder embed``, ``influcoder index``, ``influcoder attribute`` and ``influcoder filter``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperCommand

from .options import OOD_ALIASES, RAY_ALIASES, data_aliases, param, quiet_param

console = Console(stderr=True)


class _OptionalRayValue(TyperCommand):
    """Lets ``--ray`` be given without a value (``--ray`` alone = RAY_ADDRESS or a local instance):
    a bare ``--ray`` (last, or followed by another option) gets the value ``local``."""

    def parse_args(self, ctx, args):
        fixed = []
        for i, a in enumerate(args):
            fixed.append(a)
            if a in ("--ray", "--ray.address") and (i + 1 == len(args) or args[i + 1].startswith("-")):
                fixed.append("local")
        return super().parse_args(ctx, fixed)


def register(app: typer.Typer) -> None:
    app.command("embed", cls=_OptionalRayValue)(_embed_command())
    app.command("index")(_index_command())
    app.command("attribute")(_attribute_command())
    app.command("filter", cls=_OptionalRayValue)(_filter_command())


def _require_file(path, flag: str) -> None:
    from ..core.errors import UserError
    from ..data.records import is_datasets_folder

    if path is not None and not Path(path).is_file() and not is_datasets_folder(path):
        raise UserError(f"{path}: {flag} file not found" if not Path(path).exists() else
                        f"{path}: {flag} is a folder, expected a records file (.jsonl/.json/.csv/.parquet)")


def _embed(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..search.embed import EmbedConfig, embed_file, open_embeddings

    _require_file(values["data__path"], "--data")
    cfg = config_from_flags(EmbedConfig, {**values, "dtype": "float32" if extras["float32"] else "float16"})
    if extras["ray"].address is not None:
        from ..search.ray_backend import embed_with_ray

        path = embed_with_ray(cfg, extras["ray"])
    else:
        path = embed_file(cfg, progress=not extras["quiet"])
    s = open_embeddings(path)
    st = s.manifest.get("stats", {})
    console.print(f"embedded {len(s)} × {s.dim} ({s.manifest['dtype']}) into {path} "
                  f"({st.get('examples_per_s_last_run') or 0:.1f} ex/s, {st.get('bytes_per_example')} bytes/example)")
    if st.get("n_invalid"):
        console.print(f"[yellow]{st['n_invalid']} invalid rows skipped; see {path / 'invalid.jsonl'}[/]")


def _embed_command():
    """``influcoder embed``: flags generated from :class:`influcoder.search.embed.EmbedConfig`'s fields, but
    ``dtype``, whose flag stays ``--float32`` (float16 otherwise)."""
    from ..core.config import command_from
    from ..search.embed import EmbedConfig
    from ..search.ray_backend import RayConfig

    extra = [param("float32", bool, typer.Option(False, "--float32", help="Store float32 instead of float16 (the dtype field).")),
             quiet_param()]
    return command_from(EmbedConfig, _embed, exclude=("dtype",), extra=extra,
                        aliases={**data_aliases("data", "data"), **RAY_ALIASES}, sections={"ray": RayConfig},
                        shown=("encoder", "data__path", "out", "data__preset", "device", "precision", "batch_size",
                               "ray__address", "ray__num_actors"), doc=(
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
    """``influcoder index``: flags generated from :class:`influcoder.search.index.IndexConfig`'s fields."""
    from ..core.config import command_from
    from ..search.index import IndexConfig

    return command_from(IndexConfig, _index, doc="Build a FAISS inner-product index over an embedding store.")


def _attribute(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..search.attribute import AttributeConfig, run_attribute

    cfg = config_from_flags(AttributeConfig, values)
    recs, report = run_attribute(cfg)
    console.print(f"wrote {len(recs)} rows for {report['n_queries']} queries to {cfg.out}")
    if report["ood_reference"]:
        console.print(f"{report['queries_ood']} of {report['n_queries']} queries flagged out of distribution "
                      f"(threshold {report['ood_reference']['query']['threshold']:.3f})")
    for note in report["notes"]:
        console.print(f"[yellow]{note}[/]")


def _attribute_command():
    """``influcoder attribute``: flags generated from :class:`influcoder.search.attribute.AttributeConfig`."""
    from ..core.config import command_from
    from ..search.attribute import AttributeConfig

    aliases = {**data_aliases("queries", "queries", "query-"), "query_texts": "--query-text", "with_text": "/--no-text",
               **OOD_ALIASES}
    shown = ("encoder", "index", "queries__path", "query_texts", "top_k", "out", "queries__preset", "data", "device")
    return command_from(AttributeConfig, _attribute, aliases=aliases, shown=shown, required=("out",),
                        doc="Top-k most influential pool examples for each query.")


def _filter(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..search.filter import FilterConfig, filter_pool

    _require_file(values.get("data__path") or None, "--data")
    values["dtype"] = "float32" if extras["float32"] else "float16"
    cfg = config_from_flags(FilterConfig, values)
    if extras["ray"].address is not None:
        from ..search.ray_backend import filter_with_ray

        path = filter_with_ray(cfg, extras["ray"])
    else:
        path = filter_pool(cfg, progress=not extras["quiet"])
    rep = json.loads((path / "report.json").read_text())
    console.print(f"scored {rep['n_pool']} pool examples over {rep['n_queries']} queries ({cfg.aggregate}); "
                  f"{rep['n_selected']} selected, {rep['n_written']} written ({rep['mode']}) → {', '.join(rep['outputs'])}")
    if rep["ood_reference"]:
        console.print(f"OOD: {rep['queries_ood']} queries and {rep['pool_ood']} pool examples flagged (see {path / 'ood.jsonl'})")
    for note in rep["notes"]:
        console.print(f"[yellow]{note}[/]")


def _filter_command():
    """``influcoder filter``: flags generated from :class:`influcoder.search.filter.FilterConfig`, but ``dtype``,
    whose flag stays ``--float32`` (float16 otherwise)."""
    from ..core.config import command_from
    from ..search.filter import FilterConfig
    from ..search.ray_backend import RayConfig

    extra = [param("float32", bool, typer.Option(False, "--float32", help="Store pool embeddings as float32 (the dtype field).")),
             quiet_param()]
    aliases = {**data_aliases("data", "data"), **data_aliases("queries", "queries", "query-"),
               "pool_texts": "--pool-text", "query_texts": "--query-text", **OOD_ALIASES, **RAY_ALIASES}
    shown = ("encoder", "data__path", "queries__path", "out", "aggregate", "fraction", "threshold", "keep", "data__preset",
             "queries__preset", "ray__address")
    return command_from(FilterConfig, _filter, exclude=("dtype",), extra=extra, aliases=aliases, shown=shown,
                        sections={"ray": RayConfig}, doc=(
        "Score a pool by influence aggregated over queries; write scores, ranking and a filtered copy."))
