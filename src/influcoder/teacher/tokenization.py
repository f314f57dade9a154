"""Turn records into decoder token ids with a response mask, and pack them into padded batches.

* With a chat template (the tokenizer has one and ``use_chat_template`` is not False) the record is
  rendered as user/assistant turns (or its own ``messages``); the prompt is the rendering of every
  turn before the last assistant turn plus the generation prompt, the response is the rest (the
  assistant's text and its end-of-turn tokens).
* Without one: the prompt's tokens (with the tokenizer's special start tokens) followed by the
  response's tokens and the EOS token.
* Truncation keeps the response: prompt tokens are cut from the left first (one prompt token is always
  kept so the first response token has a position that predicts it); only when the response alone
  is longer than ``max_length - 1`` is the response cut on the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.records import Record, RecordError

__all__ = ["Encoded", "encode_record", "encode_records", "Batch", "collate", "pack_by_tokens"]


@dataclass
class Encoded:
    """Token ids of one example; ``ids[prompt_len:]`` are the response tokens that carry loss."""

    ids: list[int]
    prompt_len: int
    truncated_prompt_tokens: int = 0
    truncated_response_tokens: int = 0

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.prompt_len

    def __len__(self) -> int:
        return len(self.ids)


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _template_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def encode_record(tokenizer, rec: Record, max_length: int, use_chat_template: bool | None = None) -> Encoded:
    """Tokenise one record; raises :class:`RecordError` if no response token survives."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (one prompt token and one response token)")
    chat = _has_template(tokenizer) if use_chat_template is None else use_chat_template
    if chat and not _has_template(tokenizer):
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    if chat:
        turns = rec.messages or [
            {"role": "user", "content": rec.prompt},
            {"role": "assistant", "content": rec.response},
        ]
        prompt_ids = _template_ids(tokenizer, turns[:-1], add_generation_prompt=True)
        full_ids = _template_ids(tokenizer, turns, add_generation_prompt=False)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise RecordError(rec.source, rec.row, "prompt", "the chat template does not render the prompt as a prefix of the conversation")
        response_ids = full_ids[len(prompt_ids) :]
    elif rec.messages:
        raise RecordError(rec.source, rec.row, "messages", "chat-style record but the tokenizer has no chat template")
    else:
        prompt_ids = list(tokenizer(rec.prompt, add_special_tokens=True)["input_ids"]) if rec.prompt else []
        if not prompt_ids and tokenizer.bos_token_id is not None:
            prompt_ids = [tokenizer.bos_token_id]
        response_ids = list(tokenizer(rec.response, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            response_ids.append(tokenizer.eos_token_id)
    field = "messages" if rec.messages else "response"
    if not response_ids:
        raise RecordError(rec.source, rec.row, field, "response has no tokens")
    if not prompt_ids:
        raise RecordError(rec.source, rec.row, "prompt", "empty prompt and the tokenizer has no BOS token to predict the first response token from")
    cut_prompt = cut_response = 0
    if len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = max(1, max_length - len(response_ids))
        cut_prompt = len(prompt_ids) - keep_prompt
        prompt_ids = prompt_ids[cut_prompt:]
        if len(prompt_ids) + len(response_ids) > max_length:
            cut_response = len(prompt_ids) + len(response_ids) - max_length
            response_ids = response_ids[: len(response_ids) - cut_response]
    if not response_ids:  # pragma: no cover - max_length >= 2 guarantees one token survives
        raise RecordError(rec.source, rec.row, field, f"no response token survives truncation to {max_length} tokens")
    return Encoded(prompt_ids + response_ids, len(prompt_ids), cut_prompt, cut_response)


def encode_records(tokenizer, records: list[Record], max_length: int, use_chat_template: bool | None = None) -> list[Encoded]:
    return [encode_record(tokenizer, r, max_length, use_chat_template) for r in records]


@dataclass
class Batch:
    """A padded batch: ``labels`` is -100 at prompt and padding positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.position_ids)))


def collate(examples: list[Encoded], pad_id: int, padding_side: str = "right") -> Batch:
    """Pad to the longest example. Position ids count real tokens only, so padding never moves RoPE."""
    if padding_side not in ("left", "right"):
        raise ValueError("padding_side must be 'left' or 'right'")
    width = max(len(e) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        start = 0 if padding_side == "right" else width - len(e)
        t = torch.tensor(e.ids, dtype=torch.long)
        ids[i, start : start + len(e)] = t
        mask[i, start : start + len(e)] = 1
        labels[i, start + e.prompt_len : start + len(e)] = t[e.prompt_len :]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, labels, position_ids)


def pack_by_tokens(lengths: list[int], max_examples: int, token_budget: int | None) -> list[list[int]]:
    """Group example indices into batches: sorted by length (longest first, ties by index), greedy,
    with at most ``max_examples`` per batch and ``len(batch) * longest ≤ token_budget`` (a single example
    longer than the budget gets a batch of its own). Deterministic for the same lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= max_examples or (token_budget and (len(cur) + 1) * longest > token_budget)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches

