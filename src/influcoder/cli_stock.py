"""``influcoder stock`` and ``influcoder influence``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("stock")(stock_cmd)
    app.command("influence")(influence_cmd)


def stock_cmd(
    model: str = typer.Option(..., "--model", help="Decoder: hub id, local folder, or smollm2-135m-instruct."),
    data: Path = typer.Option(..., "--data", help="Records file (.jsonl/.json/.csv/.parquet)."),
    out: Path = typer.Option(..., "--out", help="Store folder (an unfinished store there is resumed)."),
    projection: str = typer.Option("countsketch", "--projection", help="countsketch | rademacher | gaussian | none."),
    proj_dim: int = typer.Option(8192, "--proj-dim", help="Projected dimension k."),
    batch_size: int = typer.Option(8, "--batch-size", help="Most examples per batch."),
    token_budget: int = typer.Option(1024, "--token-budget", help="Most padded tokens per batch (bounds activation memory; 1024 was as fast as 4096 here)."),
    max_length: int = typer.Option(512, "--max-length", help="Tokens per example (prompt cut from the left first)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the projection and LoRA initialisation."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (autocast)."),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="float32 | float16."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Field mapping: alpaca, dolly, bbh, gsm8k, xstest-completions."),
    prompt_field: Optional[str] = typer.Option(None, "--prompt-field", help="Prompt field(s), comma-separated."),
    response_field: Optional[str] = typer.Option(None, "--response-field", help="Response field."),
    messages_field: Optional[str] = typer.Option(None, "--messages-field", help="Chat messages field."),
    id_field: Optional[str] = typer.Option(None, "--id-field", help="Id field."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N valid records."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad rows (listed in OUT/invalid.jsonl)."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template", help="Force the chat template on or off."),
    lora_rank: int = typer.Option(8, "--lora-rank"),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha"),
    target_modules: Optional[str] = typer.Option(None, "--target-modules", help="Comma-separated layer names (default: all block linears)."),
    include_lora_a: str = typer.Option("auto", "--include-lora-a", help="auto | yes | no."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder to use (e.g. POOL_STORE/adapter)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="LESS-style LoRA warm-up steps before stocking."),
    warmup_lr: float = typer.Option(2e-5, "--warmup-lr"),
    padding_side: str = typer.Option("right", "--padding-side"),
    shard_size: int = typer.Option(256, "--shard-size", help="Rows per shard (unit of resume)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing store at --out first."),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | cuda:N | auto (under torchrun: this rank's GPU)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Stock per-example LoRA gradients (response tokens only), projected, into a resumable store."""
    from .stock import StockConfig, stock

    cfg = StockConfig(
        model=model, data=str(data), out=str(out), prompt_field=prompt_field, response_field=response_field,
        messages_field=messages_field, id_field=id_field, preset=preset, limit=limit, skip_invalid=skip_invalid,
        chat_template=chat_template, max_length=max_length, projection=projection, proj_dim=proj_dim, seed=seed,
        lora_rank=lora_rank, lora_alpha=lora_alpha, target_modules=target_modules, include_lora_a=include_lora_a,
        adapter=str(adapter) if adapter else None, warmup_steps=warmup_steps, warmup_lr=warmup_lr, dtype=dtype,
        store_dtype=store_dtype, batch_size=batch_size, token_budget=token_budget, padding_side=padding_side,
        shard_size=shard_size, overwrite=overwrite, device=device,
    )
    path = stock(cfg, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports for everyone
    from .store import open_store

    s = open_store(path)
    stats = s.manifest.get("stats", {})
    ranks = stats.get("ranks") or [stats]
    rate = sum(r.get("examples_per_s_last_run") or 0 for r in ranks)
    peak = max((r.get("peak_rss_mb") or 0) for r in ranks)
    console.print(f"stored {len(s)} × {s.dim} gradients in {path} ({rate:.2f} ex/s over {len(ranks)} process(es), peak {peak} MB per process)")
    if s.manifest.get("n_invalid"):
        console.print(f"[yellow]{s.manifest['n_invalid']} invalid rows skipped; see {path / 'invalid.jsonl'}[/]")


def influence_cmd(
    pool: Path = typer.Option(..., "--pool", help="Pool gradient store."),
    query: Path = typer.Option(..., "--query", help="Query gradient store."),
    out: Path = typer.Option(..., "--out", help="Output .npy (float32, pool × query); ids go to OUT.meta.json."),
    block: int = typer.Option(8192, "--block", help="Rows per block (bounds memory)."),
    quiet: bool = typer.Option(False, "--quiet"),
):
    """Cosine influence matrix between a pool store and a query store."""
    from .influence import compute_influence

    path = compute_influence(pool, query, out, pool_block=block, query_block=block, progress=not quiet)
    console.print(f"wrote {path} and {path.with_name(path.stem + '.meta.json').name}")
