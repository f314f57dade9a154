"""Frozen lower encoder layers, computed once per text: the cheap training path of stage 3.

With ``DistillConfig.freeze_layers = k`` the student's word embeddings and its first ``k`` transformer
layers are frozen. Their output for a text never changes during training, so :class:`LayerCache` runs them
once per training text (no gradients) and keeps the hidden states; each training step then runs only the
top ``n − k`` layers, the pooling and the head on the cached states. The result is the same embedding
as the full forward of :meth:`InfluenceEncoder.embed` (tested to float tolerance), at a fraction of the cost,
and the saved model is the ordinary full encoder (validation and inference use the full forward).

Supported students (Hugging Face encoders whose transformer exposes ``encoder.layer``):

* BERT-style encoders (``model_type`` in :data:`BERT_STYLE`) that call each layer as
  ``layer(hidden, attention_mask=mask)``: BERT, MiniLM, BGE/E5 (BERT-based), RoBERTa, XLM-R, ELECTRA, …
* MPNet (``mpnet-base``, all-mpnet-base-v2): every layer also takes
  ``position_bias = encoder.compute_position_bias(hidden)``, a relative attention bias
  computed from ``encoder.relative_attention_bias``, one embedding **shared by all layers**. The cached
  lower-layer states were computed with it, so :func:`freeze_lower` freezes it together with the
  embeddings and the first ``k`` layers; the trained top layers then use that same, frozen, bias (letting
  them train it would silently invalidate the cache).

For both, the top layers' attention mask is built by transformers' public helper
``transformers.masking_utils.create_bidirectional_mask`` — the one these models' own ``forward`` calls —
so it has the form the configured attention implementation (eager, SDPA, …) expects. No private
transformers method is called. Others (DistilBERT, T5, …) get a clear error; train them with
``freeze_layers = 0``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.errors import UserError

__all__ = ["LayerCache", "encoder_layers", "freeze_lower", "BERT_STYLE"]

BERT_STYLE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
"""``config.model_type`` of the BERT-style encoders the layer cache runs (each layer: ``layer(h, attention_mask=m)``)."""


def _hf(enc):
    tr = enc.model[0]
    hf = getattr(tr, "auto_model", None) or getattr(tr, "model", None)
    if hf is None:
        raise UserError("freeze_layers: the student's first module has no Hugging Face model")
    return hf


def _mask_fn():
    """transformers' public ``create_bidirectional_mask`` (``transformers.masking_utils``), or a clear error."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers < 4.5x: not replicated here
        import transformers

        raise UserError(f"freeze_layers: transformers {transformers.__version__} has no masking_utils."
                        "create_bidirectional_mask, which the layer cache uses; install the locked version "
                        "(make setup) or use freeze_layers 0") from None
    return create_bidirectional_mask


def _kind(hf) -> str:
    """``"bert"`` or ``"mpnet"``: how the layer cache runs this Hugging Face model's top layers."""
    name = type(hf).__name__
    mtype = getattr(hf.config, "model_type", None)
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if layers is None:
        raise UserError(f"freeze_layers: {name} is not supported by the layer cache (it has no encoder.layer; "
                        "supported: BERT-style encoders and MPNet); use freeze_layers 0")
    if getattr(hf.config, "is_decoder", False):
        raise UserError(f"freeze_layers: {name} is configured as a decoder (causal mask); the layer cache runs "
                        "bidirectional encoders only; use freeze_layers 0")
    if mtype in BERT_STYLE:
        return "bert"
    enc = hf.encoder
    if mtype == "mpnet" and hasattr(enc, "compute_position_bias") and hasattr(enc, "relative_attention_bias"):
        return "mpnet"
    raise UserError(f"freeze_layers: {name} (model_type {mtype!r}) is not supported by the layer cache "
                    f"(supported: {', '.join(sorted(BERT_STYLE))} and mpnet); use freeze_layers 0")


def encoder_layers(enc) -> Any:
    """The student's list of transformer layers (``encoder.layer`` of a supported encoder, see the module doc)."""
    hf = _hf(enc)
    _kind(hf)
    return hf.encoder.layer


def freeze_lower(enc, k: int) -> int:
    """Freeze word/position embeddings and the first ``k`` layers; return the number of layers.

    For MPNet the relative attention bias (``encoder.relative_attention_bias``) is frozen too: it is shared
    by all layers, the cached lower states depend on it, so it must not move during training."""
    layers = encoder_layers(enc)
    n = len(layers)
    if not 0 <= k < n:
        raise UserError(f"freeze_layers must be in [0, {n - 1}] for this student ({n} layers), got {k}")
    if k == 0:
        return n
    hf = _hf(enc)
    for p in hf.embeddings.parameters():
        p.requires_grad_(False)
    if _kind(hf) == "mpnet":
        for p in hf.encoder.relative_attention_bias.parameters():
            p.requires_grad_(False)
    for layer in layers[:k]:
        for p in layer.parameters():
            p.requires_grad_(False)
    return n


class LayerCache:
    """Hidden states after the first ``k`` layers for a fixed list of texts (float32, one tensor per text)."""

    def __init__(self, enc, k: int):
        if k < 1:
            raise ValueError("LayerCache needs k ≥ 1 frozen layers")
        self.enc, self.k = enc, k
        self.layers = encoder_layers(enc)
        self.hf = _hf(enc)
        self.kind = _kind(self.hf)
        self.states: dict[str, list] = {}

    def _features(self, texts: list[str], side: str) -> dict:
        prefix = self.enc.prefix(side)
        return self.enc.model.preprocess(texts, prompt=prefix or None)

    def add(self, name: str, texts: Sequence[str], side: str, batch_size: int = 32) -> None:
        """Run embeddings + first k layers (eval mode, no grad) on ``texts``; keep one (len, hidden) tensor each."""
        import torch

        was = self.enc.model.training
        self.enc.model.eval()
        out = [None] * len(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # length-sorted batches: little padding
        try:
            with torch.no_grad():
                for s in range(0, len(texts), batch_size):
                    idx = order[s:s + batch_size]
                    f = self._features([texts[i] for i in idx], side)
                    dev = self.hf.device
                    kwargs = {k: f[k].to(dev) for k in ("input_ids", "attention_mask", "token_type_ids") if k in f}
                    hs = self.hf(**kwargs, output_hidden_states=True).hidden_states[self.k]
                    lens = f["attention_mask"].sum(dim=1).tolist()
                    for j, i in enumerate(idx):
                        out[i] = hs[j, : int(lens[j])].float().clone()
        finally:
            self.enc.model.train(was)
        self.states[name] = out

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for v in self.states.values() for t in v)

    def embed(self, name: str, idx: Sequence[int]):
        """Differentiable sentence embeddings of cached texts ``idx`` of ``name``: top layers + pooling + head."""
        import torch

        seqs = [self.states[name][int(i)] for i in idx]
        L = max(int(t.shape[0]) for t in seqs)
        H = int(seqs[0].shape[1])
        dev = seqs[0].device  # the states live where the model runs
        h = torch.zeros(len(seqs), L, H, device=dev)
        am = torch.zeros(len(seqs), L, dtype=torch.long, device=dev)
        for j, t in enumerate(seqs):
            h[j, : t.shape[0]] = t
            am[j, : t.shape[0]] = 1
        # the mask as the model's own forward builds it (public helper; form follows the attention implementation)
        mask = _mask_fn()(config=self.hf.config, inputs_embeds=h, attention_mask=am)
        bias = self.hf.encoder.compute_position_bias(h) if self.kind == "mpnet" else None  # as MPNetEncoder.forward
        for layer in self.layers[self.k:]:
            o = layer(h, attention_mask=mask) if bias is None else layer(h, attention_mask=mask, position_bias=bias)
            h = o[0] if isinstance(o, tuple) else o
        feats = {"token_embeddings": h, "attention_mask": am}
        mods = list(self.enc.model._modules.values())
        for m in mods[1:]:
            feats = m(feats)
        return feats["sentence_embedding"]
