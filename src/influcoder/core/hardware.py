"""Device and precision chosen by the hardware: ``device: auto`` and ``precision: auto`` of every stage.

* **device** — ``auto``: CUDA when torch sees a GPU, else the CPU; ``cpu`` forces the CPU; ``cuda`` /
  ``cuda:N`` a GPU (an error where there is none).
* **precision** — ``auto``: bfloat16 only where the device computes it natively, float32 elsewhere;
  ``float32`` / ``bfloat16`` force one. On CUDA, "natively" is ``torch.cuda.is_bf16_supported()``. On a CPU,
  ``torch.backends.cpu.get_cpu_capability()`` says ``AVX512`` whether or not the CPU has the AVX512_BF16 /
  AMX instructions (and it does not see ``ONEDNN_MAX_CPU_ISA``), so a short measured probe decides: one bf16
  and one float32 matmul of the same shape (a few ms each where bf16 is native; ≈ 0.1 s where it is
  emulated, ≈ 20–30× slower than float32). bf16 is native when it is at least as fast as float32.

The probe runs once per process (cached). ``INFLUCODER_CPU_BF16=native`` or ``=emulated`` skips it and
states the answer (the test suite sets ``emulated`` so that ``auto`` means float32 on every machine, and fakes
the other outcome where it tests it). :func:`cpu_info` is what every timing records beside its figures.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from typing import Any

from .errors import UserError

__all__ = ["PRECISIONS", "check_device", "check_precision", "check_compute", "resolve_device", "resolve_precision",
           "resolve", "native_bf16",
           "cpu_bf16_probe", "autocast", "cpu_info", "cpu_line", "announce"]

CPU_BF16_ENV = "INFLUCODER_CPU_BF16"
"""Environment variable that states whether this CPU's bf16 is native (``native``/``emulated``) instead of measuring."""

PRECISIONS = ("auto", "float32", "bfloat16")
"""Values of every ``precision`` (and the teacher's ``dtype``) setting."""


def check_precision(value: str, what: str = "precision") -> None:
    """Config validation (no torch import): ``value`` is one of :data:`PRECISIONS`."""
    if value not in PRECISIONS:
        raise UserError(f"{what} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def check_device(value: str, what: str = "device") -> None:
    """Config validation (no torch import): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    if not ok:
        raise UserError(f"{what} must be auto, cpu, cuda or cuda:N, got {value!r}")


def check_compute(device: str, precision: str) -> None:
    """Config validation of a stage's ``device`` and ``precision`` pair (no torch import)."""
    check_device(device)
    check_precision(precision)


def resolve_device(requested: str | None = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an explicit GPU where none is visible is an error."""
    import torch

    requested = requested or "auto"
    check_device(requested)
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {requested}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                        "use --device cpu or auto, or install a CUDA build of torch (README: GPU)")
    return requested


@functools.lru_cache(maxsize=None)
def cpu_bf16_probe() -> dict[str, Any]:
    """Measured: float32 and bfloat16 GFLOP/s of one (256 × 576) @ (576 × 1536) matmul (best of 3 after a
    warm-up) on this CPU with the current thread count, and whether bf16 is native (not slower than float32)."""
    import torch

    m, k, n = 256, 576, 1536
    out: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced:
        if forced not in ("native", "emulated"):
            raise UserError(f"{CPU_BF16_ENV} must be native or emulated, got {forced!r}")
        return {**out, "native": forced == "native", "float32_gflops": None, "bfloat16_gflops": None,
                "forced_by": f"{CPU_BF16_ENV}={forced}"}
    g = torch.Generator().manual_seed(0)
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(m, k, generator=g).to(dt)
        b = torch.randn(k, n, generator=g).to(dt)
        a @ b
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[f"{name}_gflops"] = round(2 * m * k * n / max(best, 1e-9) / 1e9, 2)
    out["native"] = out["bfloat16_gflops"] >= out["float32_gflops"]
    return out


def native_bf16(device: str) -> bool:
    """Does ``device`` (a resolved device: ``cpu``, ``cuda``, ``cuda:N``) compute bfloat16 natively?"""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        return bool(cpu_bf16_probe()["native"])
    return False


def resolve_precision(requested: str | None, device: str) -> str:
    """``auto`` → ``bfloat16`` where ``device`` computes it natively, else ``float32``; explicit values kept."""
    requested = requested or "auto"
    check_precision(requested)
    if requested != "auto":
        return requested
    return "bfloat16" if native_bf16(device) else "float32"


def resolve(device: str | None, precision: str | None) -> tuple[str, str]:
    """A stage's ``(device, precision)`` as they resolve here (``auto`` of either decided by the hardware)."""
    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)


def autocast(device: str, precision: str):
    """The context every model forward of a stage runs in: bfloat16 autocast on the device's type, or nothing."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info(probe: bool = True) -> dict[str, Any]:
    """The CPU a timing was taken on: model name, torch's capability, threads, cores, load average, and the
    bf16 probe (:func:`cpu_bf16_probe`, measured once per process) — recorded beside every benchmark figure."""
    import torch

    info: dict[str, Any] = {"cpu_model": _cpu_model(), "machine": platform.machine(),
                            "capability": torch.backends.cpu.get_cpu_capability(),
                            "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                            "torch": torch.__version__}
    env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS") if k in os.environ}
    if env:
        info["env"] = env
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if probe:
        p = cpu_bf16_probe()
        info["bf16_native"] = p["native"]
        info["float32_gflops"], info["bfloat16_gflops"] = p["float32_gflops"], p["bfloat16_gflops"]
        if p.get("forced_by"):
            info["bf16_forced_by"] = p["forced_by"]
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


_ANNOUNCED: set[tuple[str, str, str]] = set()


def announce(stage: str, device: str, precision: str, requested: str, log=None) -> None:
    """Say once per process and (device, precision) what a stage runs on, and why (``auto`` resolved)."""
    key = (device, precision, requested)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    why = ""
    if requested == "auto":
        if device == "cpu":
            p = cpu_bf16_probe()
            how = p.get("forced_by") or (f"{p['bfloat16_gflops']:.0f} vs {p['float32_gflops']:.0f} GFLOP/s float32")
            why = (f" (precision auto: bf16 {'native' if p['native'] else 'emulated'} on this CPU, {how}; "
                   f"capability {p['capability']})")
        else:
            why = " (precision auto)"
    msg = f"{stage}: device {device}, precision {precision}{why}"
    if log is not None:
        log(msg)
    else:
        print(msg, file=sys.stderr)


def cpu_line(info: dict | None) -> str:
    """One line of :func:`cpu_info` for a results page (model, capability, threads, bf16 native or not)."""
    if not info:
        return "not recorded"
    bf = info.get("bf16_native")
    rates = (f", fp32 {info['float32_gflops']:.0f} / bf16 {info['bfloat16_gflops']:.0f} GFLOP/s"
             if info.get("float32_gflops") else "")
    env = "".join(f", {k}={v}" for k, v in (info.get("env") or {}).items() if k != "OMP_NUM_THREADS")
    return (f"{info.get('cpu_model')} ({info.get('capability')}{env}; bf16 {'native' if bf else 'emulated' if bf is False else '?'}"
            f"{rates}), {info.get('torch_threads')} torch threads of {info.get('cores')} cores")
