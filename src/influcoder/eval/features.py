"""Decoder features of the baselines: per-record hidden states, LoRA gradients and LoGra factors of the target
decoder, computed once and cached on disk by content (:class:`DecoderFeatures`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.fileio import atomic_save_npy, atomic_write_text
from ..data.records import Record

__all__ = ["DecoderFeatures", "record_key"]


def record_key(rec: Record) -> str:
    """Content hash of a record (prompt, response, messages): the per-example feature cache key."""
    h = hashlib.sha1(json.dumps([rec.prompt, rec.response, rec.messages], sort_keys=True).encode())
    return h.hexdigest()[:20]


# ============================================================================ decoder features
@dataclass
class _Entry:
    """One cached feature kind: per-record rows in shards."""

    root: Path
    index: dict = field(default_factory=dict)  # record key -> [shard, row]
    seconds: float = 0.0
    count: int = 0


class _FeatureCache:
    """Per-record feature rows on disk: ``<root>/<feature key>/{index.json, shard_*.npy}`` (atomic writes).

    A record's row is found by its content hash, so another pool or experiment that contains the
    same example reuses it. ``index.json`` also keeps the seconds spent computing, for costs."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.mem: dict[str, dict[str, np.ndarray]] = {}
        self.meta: dict[str, dict] = {}

    def _dir(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key

    def _load_index(self, key: str) -> dict:
        d = self._dir(key)
        if key in self.meta and (d is None or not (d / "index.json").exists()):
            return self.meta[key]
        meta = {"rows": {}, "seconds": 0.0, "count": 0}
        if d is not None and (d / "index.json").exists():
            meta = json.loads((d / "index.json").read_text())
        self.meta[key] = meta
        return meta

    def get(self, key: str, records, compute: Callable[[list], dict[str, np.ndarray]], parts: Sequence[str],
            chunk: int | None = None, log: Callable[[str], None] | None = None):
        """Rows of ``parts`` for ``records`` (computing only the missing ones); returns dict part → array.
        With ``chunk``, the missing rows are computed and saved ``chunk`` at a time (a killed pass resumes from
        the last saved chunk), each chunk logged with its rate."""
        meta = self._load_index(key)
        keys = [record_key(r) for r in records]
        missing, seen = [], set()
        for r, k in zip(records, keys):
            if k not in meta["rows"] and k not in seen:
                missing.append(r)
                seen.add(k)
        step = chunk or max(len(missing), 1)
        t_all, total = time.perf_counter(), len(missing)
        for start in range(0, total, step):
            meta = self._add(key, missing[start:start + step], compute, parts, meta)
            if chunk and total > chunk and log is not None:
                done = min(start + step, total)
                log(f"{key.split('-')[0]}: {done}/{total} rows computed "
                    f"({done / (time.perf_counter() - t_all):.2f} ex/s), saved")
        out = {}
        for p in parts:
            cache: dict = {}
            rows = []
            for k in keys:
                s, i = meta["rows"][k]
                if s not in cache:
                    d = self._dir(key)
                    cache[s] = (np.load(d / f"{_shard_file(s, p)}.npy", mmap_mode="r") if d is not None
                                else self.mem[key][s][p])
                rows.append(cache[s][i])
            out[p] = np.stack(rows) if rows else np.zeros((0,), np.float32)
        return out

    def _add(self, key: str, missing: list, compute, parts: Sequence[str], meta: dict) -> dict:
        """Compute ``missing`` and add them as one shard; returns the updated index."""
        if missing:
            t0 = time.perf_counter()
            new = compute(missing)
            dt = time.perf_counter() - t0
            # unique per write: two writes in the same millisecond (same process) must not share a name
            shard = f"{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            d = self._dir(key)
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
                for p in parts:
                    atomic_save_npy(d / f"{_shard_file(shard, p)}.npy", new[p])
                meta = self._merge_on_disk(key, d, missing, shard, dt)
            else:
                self.mem.setdefault(key, {})[shard] = new
                for i, r in enumerate(missing):
                    meta["rows"][record_key(r)] = [shard, i]
                meta["seconds"] += dt
                meta["count"] += len(missing)
        return meta

    def _merge_on_disk(self, key: str, d: Path, missing, shard: str, dt: float) -> dict:
        """Add the new rows to index.json under an exclusive lock, re-reading it first, so that several
        processes filling the same cache never drop each other's rows."""
        import fcntl

        with open(d / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = {"rows": {}, "seconds": 0.0, "count": 0}
            if (d / "index.json").exists():
                meta = json.loads((d / "index.json").read_text())
            for i, r in enumerate(missing):
                meta["rows"][record_key(r)] = [shard, i]
            meta["seconds"] += dt
            meta["count"] += len(missing)
            atomic_write_text(d / "index.json", json.dumps(meta))  # under the lock: one writer at a time
        self.meta[key] = meta
        return meta

    def seconds_per_example(self, key: str) -> float | None:
        meta = self._load_index(key)
        return meta["seconds"] / meta["count"] if meta["count"] else None


def _shard_file(shard, part: str) -> str:
    return f"shard_{shard:05d}.{part}" if isinstance(shard, int) else f"shard_{shard}.{part}"


def _slug(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class DecoderFeatures:
    """Per-example features of a decoder (hidden-state means, exact LoRA gradients, LoGra projections),
    computed in length-sorted batches and cached per record.

    Gradients: the teacher's loss and machinery (:class:`influcoder.teacher.gradients.LoraGradients`); the
    flattened LoRA gradient is stored as its unit vector in float16 plus its float64 norm (a relative
    error ≈ 1e-3 per coordinate; cosine and DataInf scores computed from them in float32)."""

    def __init__(self, model: str = "smollm2-135m-instruct", *, max_length: int = 256, batch_size: int = 8,
                 token_budget: int = 2048, cache_dir: str | Path | None = None, attn: str = "eager",
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 adapters: dict[tuple[int, int], str] | None = None, device: str = "cpu",
                 precision: str = "float32"):
        from ..core.hardware import check_compute

        check_compute(device, precision)
        if "auto" in (device, precision):
            raise ValueError("DecoderFeatures takes a resolved device and precision (see influcoder.core.hardware.resolve)")
        self.model_name = model
        self.device, self.precision = device, precision
        # {(LoRA rank, LoRA seed): adapter folder}, e.g. adapters warmed up on the pool (None = fresh adapters)
        self.adapters = dict(adapters) if adapters is not None else None
        self._adapter_hashes: dict[str, str] = {}
        self.max_length = max_length
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.attn = attn
        self.cache = _FeatureCache(cache_dir)
        self.chunk = 512  # decoder passes are computed and saved this many records at a time (resumable)
        self.progress = progress
        self.log = log or (lambda s: None)
        self._layouts: dict[str, list] = {}

    # ------------------------------------------------------------------ helpers
    def _load(self):
        from ..core.models import load_decoder

        model, tok, _ = load_decoder(self.model_name, attn_implementation=self.attn)
        return model.to(self.device), tok

    def _batches(self, tok, records):
        from ..teacher.tokenization import collate, encode_record, pack_by_tokens

        enc = [encode_record(tok, r, self.max_length) for r in records]
        for b in pack_by_tokens([len(e) for e in enc], self.batch_size, self.token_budget):
            yield b, collate([enc[i] for i in b], tok.pad_token_id, "right").to(self.device)

    def key(self, kind: str, **kw) -> str:
        # float32 keys stay as they were before precision was a setting
        prec = {} if self.precision == "float32" else {"precision": self.precision}
        return f"{kind}-{_slug({'model': self.model_name, 'max_length': self.max_length, **prec, **kw})}"

    def adapter(self, rank: int, seed: int) -> str | None:
        """The adapter folder LoRA rank-``rank`` seed-``seed`` gradients are taken at (None: a fresh adapter)."""
        if self.adapters is None:
            return None
        if (rank, seed) not in self.adapters:
            raise ValueError(f"no adapter given for LoRA rank {rank}, seed {seed} (have {sorted(self.adapters)}): "
                             "every gradient method must use an adapter warmed up like the teacher's")
        return self.adapters[(rank, seed)]

    def adapter_key(self, rank: int, seed: int) -> dict:
        """Cache-key part naming the adapter by the content hash of its weights ({} for a fresh adapter)."""
        path = self.adapter(rank, seed)
        if path is None:
            return {}
        if path not in self._adapter_hashes:
            h = hashlib.sha256()
            for f in sorted(Path(path).glob("adapter_model.*")):
                h.update(f.read_bytes())
            self._adapter_hashes[path] = h.hexdigest()[:16]
        return {"adapter": self._adapter_hashes[path]}

    # ------------------------------------------------------------------ hidden states
    def hidden(self, records: Sequence[Record]) -> dict[str, np.ndarray]:
        """``mean`` (token mean) and ``rds`` (position-weighted mean) of the last hidden state, (n, h) each."""
        return self.cache.get(self.key("hidden"), list(records), self._compute_hidden, ("mean", "rds"),
                              chunk=self.chunk, log=self.log)

    def _compute_hidden(self, records):
        model, tok = self._load()
        dec = model.get_decoder()
        n, h = len(records), model.config.hidden_size
        mean = np.zeros((n, h), np.float32)
        rds = np.zeros((n, h), np.float32)
        from ..core.hardware import autocast

        with torch.no_grad():
            for idx, batch in self._iter(tok, records, "hidden states"):
                with autocast(self.device, self.precision):
                    hs = dec(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, use_cache=False).last_hidden_state.float()
                m = batch.attention_mask.float()
                mean[idx] = ((hs * m[..., None]).sum(1) / m.sum(1, keepdim=True)).cpu().numpy()
                pos = batch.position_ids.float() + 1.0  # 1..T over real tokens
                w = pos * m
                w = w / w.sum(1, keepdim=True)
                rds[idx] = (hs * w[..., None]).sum(1).cpu().numpy()
        return {"mean": mean, "rds": rds}

    def _iter(self, tok, records, what):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not self.progress) as bar:
            task = bar.add_task(what, total=len(records))
            for b, batch in self._batches(tok, records):
                yield np.asarray(b), batch
                bar.update(task, advance=len(b))

    # ------------------------------------------------------------------ gradients
    def lora(self, records: Sequence[Record], rank: int, seed: int = 0, logra_k: int | None = None,
             logra_seed: int = 0, want_full: bool = True) -> dict[str, np.ndarray]:
        """Exact LoRA gradients (``unit`` fp16 (n, d), ``norm`` (n,)) and, with ``logra_k``, LoGra features
        (``logra`` (n, Σ k²)). One forward + backward per batch gives both."""
        parts = (("unit", "norm") if want_full else ()) + (("logra",) if logra_k else ())
        key = self.key("lora", rank=rank, seed=seed, logra_k=logra_k, logra_seed=logra_seed, full=want_full,
                       **self.adapter_key(rank, seed))

        def compute(recs):
            return self._compute_lora(recs, rank, seed, logra_k, logra_seed, want_full)

        out = self.cache.get(key, list(records), compute, parts, chunk=self.chunk, log=self.log)
        out["seconds_per_example"] = self.cache.seconds_per_example(key)
        return out

    def lora_layout(self, rank: int, seed: int = 0) -> list[dict]:
        k = f"{rank}-{seed}-{self.adapter_key(rank, seed)}"
        if k not in self._layouts:
            from ..teacher.gradients import LoraGradients, LoraSettings

            model, _ = self._load()
            self._layouts[k] = LoraGradients(model, LoraSettings(rank=rank, seed=seed),
                                             adapter_path=self.adapter(rank, seed)).layout()
        return self._layouts[k]

    def _compute_lora(self, records, rank, seed, logra_k, logra_seed, want_full):
        from ..teacher.gradients import LoraGradients, LoraSettings

        model, tok = self._load()
        lg = LoraGradients(model, LoraSettings(rank=rank, seed=seed), adapter_path=self.adapter(rank, seed),
                           dtype=self.precision)
        self._layouts[f"{rank}-{seed}-{self.adapter_key(rank, seed)}"] = lg.layout()
        hooks = _LoGraHooks(lg.causal_lm, logra_k, logra_seed) if logra_k else None
        n = len(records)
        unit = np.zeros((n, lg.dim), np.float16) if want_full else None
        norm = np.zeros(n, np.float64)
        logra = np.zeros((n, hooks.dim), np.float32) if hooks else None
        try:
            for idx, batch in self._iter(tok, records, f"LoRA r{rank} gradients"):
                if hooks:
                    hooks.active = True
                if want_full:
                    pieces, _ = lg.pieces(batch)
                    g = torch.cat(pieces, 1).double()
                    nr = g.norm(dim=1)
                    if bool((nr == 0).any()) or not bool(torch.isfinite(nr).all()):
                        raise ValueError("a LoRA gradient is zero or not finite")
                    unit[idx] = (g / nr[:, None]).float().cpu().numpy().astype(np.float16)
                    norm[idx] = nr.cpu().numpy()
                else:
                    lg.losses(batch, track=True).sum().backward()
                if hooks:
                    hooks.active = False
                    logra[idx] = hooks.collect(len(idx))
        finally:
            if hooks:
                hooks.remove()
        out = {}
        if want_full:
            out.update(unit=unit, norm=norm)
        if hooks:
            out["logra"] = logra
        return out


class _LoGraHooks:
    """Two-sided per-module projection of per-example weight gradients (LoGra), captured in one backward.

    Hooked on the LoRA-wrapped linear layers (their input is x, the gradient of their output is δ,
    whatever the adapter adds). Projections: seeded Gaussian N(0, 1/k) matrices, one pair per module."""

    def __init__(self, causal_lm: torch.nn.Module, k: int, seed: int):
        self.k = k
        self.active = False
        self.mods = [(n, m) for n, m in causal_lm.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
        if not self.mods:
            raise ValueError("LoGra: no adapted linear layers found")
        self.proj = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.handles = []
        for i, (name, m) in enumerate(self.mods):
            base = m.base_layer
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            dev = base.weight.device
            p_in = (torch.randn(k, base.in_features, generator=g) / np.sqrt(k)).to(dev)
            p_out = (torch.randn(k, base.out_features, generator=g) / np.sqrt(k)).to(dev)
            self.proj[name] = (p_in, p_out)
            self.handles.append(m.register_forward_hook(self._hook(name)))
        self.dim = len(self.mods) * k * k

    def _hook(self, name):
        def fwd(module, inputs, output):
            if not self.active or not output.requires_grad:
                return
            p_in, p_out = self.proj[name]
            x = inputs[0].detach()
            with torch.autocast(x.device.type, enabled=False):  # projections in float32 under a bf16 forward too
                xp = x.float() @ p_in.T  # (B, T, k)

            def grad_hook(g):
                gp = g.float() @ p_out.T  # (B, T, k)
                self.grads[name] = torch.einsum("bto,bti->boi", gp, xp).reshape(g.shape[0], -1)

            output.register_hook(grad_hook)

        return fwd

    def collect(self, n: int) -> np.ndarray:
        out = torch.cat([self.grads.pop(name) for name, _ in self.mods], 1)
        if out.shape[0] != n:
            raise RuntimeError("LoGra: batch size mismatch")
        return out.cpu().numpy()

    def remove(self):
        for h in self.handles:
            h.remove()
