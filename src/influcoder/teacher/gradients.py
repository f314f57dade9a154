"""Exact per-example LoRA gradients from one forward and one backward pass per batch.

Loss (the reduction, written down): for example b with response positions R_b (labels ≠ -100 after
the causal shift),

    L_b = (1 / |R_b|) · Σ_{t ∈ R_b} CE(logits_t, label_t)        (mean over the example's own response tokens)
    L   = Σ_b L_b                                                 (sum over the batch, *not* mean)

so ∂L/∂θ restricted to example b's activations is exactly ∇θ L_b: no batch-size factor, and an
example's gradient does not depend on the batch it is in.

How: peft LoRA adapters on the linear layers of the transformer blocks (never the LM head or the
embeddings). No parameter requires grad; the input embeddings do, so backward flows through the
network but no weight gradient (and no vocabulary-sized tied embedding gradient) is accumulated.
Forward hooks on each ``lora_A`` / ``lora_B`` linear keep its input activations x (B, T, in) and a
hook on its output catches ∂L/∂y (B, T, out); the per-example weight gradient is
``Σ_t ∂L/∂y_t ⊗ x_t`` = ``einsum("bto,bti->boi")``. The LM head is applied only at response positions.

Fast path (used whenever the adapted layer is a plain ``nn.Linear`` with one vanilla LoRA adapter): the
peft module's forward is swapped, for the duration of one :meth:`LoraGradients.pieces` call, for one
fused autograd function that computes ``y = W x (+ s·B(A x) when B ≠ 0)``, keeps only ``A x`` (B, T, r)
and, in its backward, returns ``∂L/∂x = gᵀW (+ s·(g B) A)`` and writes the per-example gradients
``s·Σ_t g_t ⊗ (A x_t)`` (B) and ``s·Σ_t (B^T g_t) ⊗ x_t`` (A). Same mathematics as autograd through
peft, minus the skinny matmuls, scaling and additions of an all-zero branch. The LM head and the
cross-entropy run in row chunks inside one autograd function that returns ∂CE/∂h directly, so the
(response tokens × vocabulary) logits are never kept for backward. With right padding the causal mask
alone is exact (padding comes after every real token and carries no loss), so no attention mask is
built. Everything is checked against one-backward-per-example through peft in tests/test_gradients.py.

With peft's default initialisation (B = 0) every ``lora_A`` gradient is exactly zero; by default those
coordinates are left out of the gradient (``include_lora_a="auto"``), which changes no cosine.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraSettings
from .tokenization import Batch

__all__ = ["LoraSettings", "LoraGradients", "block_linear_names", "per_example_losses"]


def _decoder_layers_prefixes(model: nn.Module) -> list[str]:
    """Names of ModuleLists that hold the transformer blocks (e.g. ``model.layers``)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and name:
            out.append(name)
    return out


def block_linear_names(model: nn.Module, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Full names of the nn.Linear layers inside the transformer blocks (LM head and embeddings excluded)."""
    prefixes = _decoder_layers_prefixes(model)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or mod is out_emb:
            continue
        if not any(name.startswith(p + ".") for p in prefixes):
            continue
        if suffixes and name.split(".")[-1] not in suffixes:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"no linear layers inside transformer blocks match target modules {suffixes}")
    return names


LM_HEAD_CHUNK = 1024
"""Response positions whose logits are materialised at once (1024 × 49,152 fp32 logits ≈ 200 MB)."""


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-row cross-entropy of ``h @ Wᵀ`` against ``targets``, computed in row chunks.

    The forward also forms ∂CE_i/∂h_i = (softmax(z_i) − onehot(y_i)) W for each row and saves only that
    (rows × hidden), so no logits survive the chunk that made them. Backward scales it by the incoming
    per-row gradient. ``W`` gets no gradient (it is frozen; for tied models it is the embedding)."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, lowp):
        rows = h.shape[0]
        ce = torch.empty(rows, dtype=torch.float32, device=h.device)
        dh = torch.empty(rows, h.shape[1], dtype=h.dtype, device=h.device)
        w = weight.to(lowp) if lowp is not None else weight
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            hc = h[r0:r1]
            z = (hc.to(lowp) @ w.t()).float() if lowp is not None else hc.float() @ w.t().float()
            lse = torch.logsumexp(z, dim=1)
            idx = torch.arange(r1 - r0, device=h.device)
            t = targets[r0:r1]
            ce[r0:r1] = lse - z[idx, t]
            p = z.sub_(lse.unsqueeze(1)).exp_()
            p[idx, t] -= 1.0
            g = (p.to(lowp) @ w).float() if lowp is not None else p @ w.float()
            dh[r0:r1] = g.to(h.dtype)
        ctx.save_for_backward(dh)
        return ce

    @staticmethod
    def backward(ctx, grad_ce):
        (dh,) = ctx.saved_tensors
        return dh * grad_ce.to(dh.dtype).unsqueeze(1), None, None, None, None


def per_example_losses(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module, *, chunk: int | None = LM_HEAD_CHUNK) -> torch.Tensor:
    """Mean response-token cross-entropy per example, computing logits only at response positions.

    With ``chunk`` (and a bias-free linear LM head) the logits are made ``chunk`` rows at a time and
    never kept for backward; ``chunk=None`` is the plain autograd version (the reference)."""
    lab = labels[:, 1:]
    mask = lab != -100
    h = hidden[:, :-1][mask]
    targets = lab[mask]
    count = mask.sum(1)
    if bool((count == 0).any()):
        raise ValueError("an example in the batch has no response token")
    fast = (chunk is not None and isinstance(lm_head, nn.Linear) and lm_head.bias is None
            and not lm_head.weight.requires_grad)  # the chunked function gives the head no gradient
    if fast:
        dev = h.device.type
        lowp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        with torch.autocast(dev, enabled=False):
            ce = _ChunkedLinearCE.apply(h, lm_head.weight, targets, int(chunk), lowp)
    else:
        logits = lm_head(h).float()
        ce = F.cross_entropy(logits, targets, reduction="none")
    owner = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(lab)[mask]
    total = torch.zeros(labels.shape[0], dtype=torch.float32, device=ce.device).index_add(0, owner, ce)
    return total / count


class _FusedLoraLinear(torch.autograd.Function):
    """``y = x Wᵀ + b (+ s·(x Aᵀ) Bᵀ when B ≠ 0)`` whose backward also writes per-example LoRA gradients."""

    @staticmethod
    def forward(ctx, x, layer, sink):
        base = layer.base_layer
        a = layer.lora_A["default"].weight
        b = layer.lora_B["default"].weight
        s = float(layer.scaling["default"])
        y = F.linear(x, base.weight, base.bias)
        xa = F.linear(x, a)
        b_zero = sink.b_zero[id(layer)]
        if not b_zero:
            y = y + F.linear(xa, b) * s
        ctx.layer, ctx.sink, ctx.s, ctx.b_zero = layer, sink, s, b_zero
        ctx.x_dtype = x.dtype
        dev = x.device.type
        ctx.autocast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        keep_x = sink.want_a
        ctx.save_for_backward(xa, x if keep_x else None)
        return y

    @staticmethod
    def backward(ctx, g):
        xa, x = ctx.saved_tensors
        layer, sink, s = ctx.layer, ctx.sink, ctx.s
        w = layer.base_layer.weight
        a = layer.lora_A["default"].weight
        b = layer.lora_B["default"].weight
        lowp = ctx.autocast
        cast = (lambda t: sink.lowp(t, lowp)) if lowp is not None else (lambda t: t)
        gl = g.to(lowp) if lowp is not None else g
        gx = gl @ cast(w)
        gb = None
        if not ctx.b_zero or x is not None:
            gb = gl @ cast(b)  # (B, T, r) = Bᵀ g per token
            if not ctx.b_zero:
                gx = gx + (gb @ cast(a)) * s
        name = sink.names[id(layer)]
        gf = g.float()
        # per-example gradient of lora_B: s · Σ_t g_t ⊗ (A x_t)   -> (B, out, r)
        sink.grads[name + ".lora_B"] = torch.bmm(gf.transpose(1, 2), xa.float()).mul_(s)
        if x is not None:
            # per-example gradient of lora_A: s · Σ_t (Bᵀ g_t) ⊗ x_t  -> (B, r, in)
            sink.grads[name + ".lora_A"] = torch.bmm(gb.float().transpose(1, 2), x.float()).mul_(s)
        return gx.to(ctx.x_dtype), None, None


def _fusable(m: nn.Module) -> bool:
    """A peft LoRA layer over a plain nn.Linear with exactly one vanilla adapter named 'default'."""
    base = getattr(m, "base_layer", None)
    return (
        type(base) is nn.Linear
        and list(m.lora_A.keys()) == ["default"]
        and not getattr(m, "lora_variant", {})
        and not getattr(m, "merged_adapters", [])
        and not getattr(m, "fan_in_fan_out", False)
        and not getattr(m, "disable_adapters", False)
        and getattr(m.lora_B["default"], "bias", None) is None
        and isinstance(m.lora_dropout["default"], nn.Identity)
    )


class _Sink:
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}
        self.names: dict[int, str] = {}
        self.b_zero: dict[int, bool] = {}
        self.want_a = False
        self._lowp: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def lowp(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``t.to(dtype)``, cached for the duration of one backward (weights are frozen)."""
        key = (id(t), dtype)
        hit = self._lowp.get(key)
        if hit is None:
            hit = self._lowp[key] = t.to(dtype)
        return hit


def _right_padded(mask: torch.Tensor) -> bool:
    """True when every row of the attention mask is ones followed by zeros (or no padding at all)."""
    if mask is None:
        return True
    lengths = mask.sum(1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths).to(mask.dtype)).all())


@dataclass
class _Slot:
    name: str
    module: nn.Module
    shape: tuple[int, int]


class LoraGradients:
    """Wraps a causal LM with LoRA adapters and computes per-example adapter gradients batch-wise."""

    def __init__(
        self,
        model: nn.Module,
        settings: LoraSettings = LoraSettings(),
        *,
        dtype: str = "float32",
        adapter_path: str | None = None,
        fused: bool = True,
        lm_head_chunk: int | None = LM_HEAD_CHUNK,
    ):
        from peft import LoraConfig, PeftModel, get_peft_model

        if dtype not in ("float32", "bfloat16"):
            raise ValueError("dtype must be float32 or bfloat16")
        self.settings = settings
        self.dtype = dtype
        self.fused = fused
        """Use the fused LoRA autograd function (else peft's forward plus hooks; same numbers)."""
        self.lm_head_chunk = lm_head_chunk
        """Rows of response-position logits made at once (None: plain autograd LM head + CE)."""
        targets = block_linear_names(model, settings.target_modules)
        if adapter_path:
            self.peft = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
        else:
            cfg = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=0.0,
                target_modules=targets,
                bias="none",
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                self.peft = get_peft_model(model, cfg)
        self.peft.eval()
        for p in self.peft.parameters():
            p.requires_grad_(False)
        self.causal_lm = self.peft.get_base_model()
        self.decoder = self.causal_lm.get_decoder()
        self.lm_head = self.causal_lm.get_output_embeddings()
        self.embed = self.causal_lm.get_input_embeddings()

        self._grads: dict[str, torch.Tensor] = {}
        self._handles = []
        self._active = False
        self._build_slots()

    def _build_slots(self) -> None:
        """Decide which adapter matrices make up the gradient and hook them."""
        for h in self._handles:
            h.remove()
        pairs = [(n, m) for n, m in self.causal_lm.named_modules() if hasattr(m, "lora_A") and hasattr(m, "lora_B")]
        if not pairs:
            raise ValueError("the model has no LoRA layers")
        b_zero = all(float(m.lora_B["default"].weight.abs().max()) == 0.0 for _, m in pairs)
        want_a = {"yes": True, "no": False, "auto": not b_zero}[self.settings.include_lora_a]
        self.includes_lora_a = want_a
        self.slots: list[_Slot] = []
        for name, m in pairs:
            if want_a:
                a = m.lora_A["default"]
                self.slots.append(_Slot(f"{name}.lora_A", a, tuple(a.weight.shape)))
            b = m.lora_B["default"]
            self.slots.append(_Slot(f"{name}.lora_B", b, tuple(b.weight.shape)))
        self.dim = sum(s.shape[0] * s.shape[1] for s in self.slots)
        # fused fast path for plain LoRA linears, forward hooks for anything else
        self._fused = {name: m for name, m in pairs if self.fused and _fusable(m)}
        self._handles = [s.module.register_forward_hook(self._make_hook(s.name)) for s in self.slots
                         if s.name.rsplit(".", 1)[0] not in self._fused]
        self._sink = _Sink()
        self._sink.want_a = want_a
        for name, m in self._fused.items():
            self._sink.names[id(m)] = name

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, name: str):
        def fwd_hook(module, inputs, output):
            if not self._active or not output.requires_grad:
                return
            x = inputs[0].detach()

            def grad_hook(g):
                self._grads[name] = torch.einsum("bto,bti->boi", g.float(), x.float())

            output.register_hook(grad_hook)

        return fwd_hook

    # ------------------------------------------------------------------ info
    def layout(self) -> list[dict]:
        """Parameter order of the flattened gradient: name and [out, in] shape of each piece."""
        return [{"name": s.name, "shape": list(s.shape)} for s in self.slots]

    def adapter_hash(self) -> str:
        """sha256 of the adapter weights (both A and B), which define the gradient as much as the base model."""
        h = hashlib.sha256()
        for name, m in self.causal_lm.named_modules():
            if hasattr(m, "lora_A") and hasattr(m, "lora_B"):
                for part in ("lora_A", "lora_B"):
                    w = getattr(m, part)["default"].weight.detach().contiguous()
                    h.update(f"{name}.{part}{tuple(w.shape)}".encode())
                    h.update(w.float().cpu().numpy().tobytes())
        return h.hexdigest()

    def autocast(self):
        if self.dtype == "bfloat16":
            return torch.autocast(self.embed.weight.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ compute
    def losses(self, batch: Batch, *, track: bool) -> torch.Tensor:
        """Per-example losses of a batch (graph kept for backward when ``track``)."""
        with torch.set_grad_enabled(track):
            emb = self.embed(batch.input_ids).detach()
            if track:
                emb.requires_grad_(True)
            mask = batch.attention_mask
            if _right_padded(mask):
                mask = None  # causal masking alone is exact: padding follows every real token, carries no loss
            with self.autocast():
                out = self.decoder(
                    inputs_embeds=emb,
                    attention_mask=mask,
                    position_ids=batch.position_ids,
                    use_cache=False,
                )
                return per_example_losses(out.last_hidden_state, batch.labels, self.lm_head, chunk=self.lm_head_chunk)

    @contextlib.contextmanager
    def _fused_forwards(self):
        """Swap each fusable peft layer's forward for the fused autograd function (restored on exit)."""
        sink = self._sink
        for m in self._fused.values():
            sink.b_zero[id(m)] = not bool(m.lora_B["default"].weight.any())  # re-read: adapters may change
            m.forward = (lambda layer: (lambda x, *a, **k: _FusedLoraLinear.apply(x, layer, sink)))(m)
        try:
            yield
        finally:
            for m in self._fused.values():
                del m.forward
            sink._lowp.clear()

    def pieces(self, batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-example gradients as a list of (B, out·in) pieces in :meth:`layout` order, and the losses."""
        self._grads = self._sink.grads = {}
        self._active = True
        try:
            with self._fused_forwards():
                losses = self.losses(batch, track=True)
                losses.sum().backward()
        finally:
            self._active = False
        n = batch.input_ids.shape[0]
        out = []
        for s in self.slots:
            g = self._grads.pop(s.name, None)
            if g is None:
                raise RuntimeError(f"no gradient reached {s.name}")
            out.append(g.reshape(n, -1))
        return out, losses.detach()

    def flat(self, batch: Batch) -> torch.Tensor:
        """Per-example gradients as one (B, d) tensor (for tests and small d)."""
        pieces, _ = self.pieces(batch)
        return torch.cat(pieces, 1)

    def lora_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for n, p in self.causal_lm.named_parameters():
            if "lora_" in n:
                yield n, p

    def warmup(self, batches: list[Batch], steps: int, lr: float = 2e-5, seed: int = 0,
               on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """LESS-style warm-up: ``steps`` AdamW steps on the LoRA parameters over ``batches`` (cycled).

        Loss per step: mean over the batch of each example's mean response-token CE; ``on_step(step, loss)``
        after each step (progress). Returns the losses."""
        params = [p for _, p in self.lora_parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        history = []
        self.peft.train()
        try:
            for step in range(steps):
                batch = batches[step % len(batches)]
                opt.zero_grad(set_to_none=True)
                loss = self.losses(batch, track=True).mean()  # mean over examples of per-example means
                loss.backward()
                opt.step()
                history.append(loss.item())
                if on_step is not None:
                    on_step(step, history[-1])
        finally:
            self.peft.eval()
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        self._build_slots()  # B is no longer zero: lora_A gradients now count under "auto"
        return history
