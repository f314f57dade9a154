"""``influcoder train``: distil influence labels into an encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


def train_cmd(
    pool_data: Path = typer.Option(..., "--pool-data", help="Pool records file (the one stocked as the pool)."),
    query_data: Path = typer.Option(..., "--query-data", help="Query records file (the one stocked as queries)."),
    labels: Path = typer.Option(..., "--labels", help="Label .npy from `influcoder influence` (ids in its .meta.json)."),
    encoder: str = typer.Option("minilm-l6", "--encoder", help="Student: HF encoder hub id or folder, or minilm-l6."),
    out: Path = typer.Option(..., "--out", help="Output folder (a sentence-transformers folder + metadata)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Field preset for both files (alpaca, dolly, bbh, prompt-response, ...)."),
    prompt_field: Optional[str] = typer.Option(None, "--prompt-field", help="Prompt field(s) for both files, comma-separated."),
    response_field: Optional[str] = typer.Option(None, "--response-field", help="Response field for both files."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Id field for both files."),
    pool_preset: Optional[str] = typer.Option(None, "--pool-preset", help="Field preset for the pool file (beats --preset)."),
    pool_prompt_field: Optional[str] = typer.Option(None, "--pool-prompt-field"),
    pool_response_field: Optional[str] = typer.Option(None, "--pool-response-field"),
    pool_id_field: Optional[str] = typer.Option(None, "--pool-id-field"),
    query_preset: Optional[str] = typer.Option(None, "--query-preset", help="Field preset for the query file (beats --preset)."),
    query_prompt_field: Optional[str] = typer.Option(None, "--query-prompt-field"),
    query_response_field: Optional[str] = typer.Option(None, "--query-response-field"),
    query_id_field: Optional[str] = typer.Option(None, "--query-id-field"),
    pool_prefix: str = typer.Option("", "--pool-prefix", help="Text prepended to pool texts."),
    query_prefix: str = typer.Option("", "--query-prefix", help="Text prepended to query texts."),
    pooling: str = typer.Option("mean", "--pooling", help="mean | cls | max."),
    projection_dim: Optional[int] = typer.Option(None, "--projection-dim", help="Linear projection head to this dimension."),
    max_length: int = typer.Option(256, "--max-length", help="Encoder tokens per text."),
    queries_per_batch: int = typer.Option(12, "--queries-per-batch", help="B: queries per step."),
    candidates: int = typer.Option(15, "--candidates", help="C: pool candidates per step."),
    alpha: float = typer.Option(0.5, "--alpha", help="Pearson weight (1 − alpha for KL)."),
    tau: float = typer.Option(0.05, "--tau", help="Softmax temperature of the KL term."),
    hard_fraction: float = typer.Option(0.0, "--hard-fraction", help="Share of candidates drawn from the queries' top influencers."),
    hard_top_k: int = typer.Option(50, "--hard-top-k"),
    lr: float = typer.Option(5e-5, "--lr"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    warmup_ratio: float = typer.Option(0.1, "--warmup-ratio"),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    epochs: int = typer.Option(10, "--epochs"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split and of training."),
    bf16: bool = typer.Option(False, "--bf16/--no-bf16", help="bfloat16 autocast for the encoder forward."),
    val_pool: float = typer.Option(0.2, "--val-pool", help="Held-out pool: fraction (< 1) or count."),
    val_queries: float = typer.Option(0.2, "--val-queries", help="Held-out queries: fraction (< 1) or count."),
    select_metric: str = typer.Option("per_anchor_spearman", "--select-metric", help="per_anchor_spearman | aggregated_spearman | query_specific_spearman | loss."),
    max_train_seconds: Optional[float] = typer.Option(None, "--max-train-seconds", help="Stop training (after validating) once this many seconds of steps are spent."),
    limit_pool: Optional[int] = typer.Option(None, "--limit-pool"),
    limit_queries: Optional[int] = typer.Option(None, "--limit-queries"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Distil the teacher's influence rankings (label file) into a bi-encoder, with a leak-free held-out split."""
    from .distill import DistillConfig, train

    cfg = DistillConfig(
        pool_data=str(pool_data), query_data=str(query_data), labels=str(labels), out=str(out), encoder=encoder,
        pool_preset=pool_preset or preset, pool_prompt_field=pool_prompt_field or prompt_field,
        pool_response_field=pool_response_field or response_field, pool_id_field=pool_id_field or id_field,
        query_preset=query_preset or preset, query_prompt_field=query_prompt_field or prompt_field,
        query_response_field=query_response_field or response_field, query_id_field=query_id_field or id_field,
        pool_prefix=pool_prefix, query_prefix=query_prefix, pooling=pooling, projection_dim=projection_dim,
        max_length=max_length, queries_per_batch=queries_per_batch, candidates=candidates, alpha=alpha, tau=tau,
        hard_fraction=hard_fraction, hard_top_k=hard_top_k, lr=lr, weight_decay=weight_decay,
        warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, epochs=epochs, grad_accum=grad_accum, seed=seed,
        bf16=bf16, val_pool=val_pool, val_queries=val_queries, select_metric=select_metric,
        max_train_seconds=max_train_seconds, limit_pool=limit_pool, limit_queries=limit_queries,
    )
    path = train(cfg, progress=not quiet, log=lambda s: console.print(s, highlight=False))
    console.print(f"encoder saved to {path}")
