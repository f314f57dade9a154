"""Cost accounting for attribution methods (METHOD.md §3: FLOPs, wall-clock, memory, storage).

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` around the method's featurisation and scoring of a
  few examples (forward *and* backward ops of torch; numpy/scipy work such as TF-IDF or BM25 is not
  counted and reported as ``None``). Decoder methods load the model with eager attention so that
  attention matmuls are counted the same way for every method.
* Wall-clock: seconds measured by the method itself on the real run (per-example featurisation time as
  recorded by the feature cache when the features were computed, plus projection and scoring time).
  This machine is shared, so seconds are noisy; FLOPs are not.
* Peak memory: the largest resident set size sampled every 10 ms by a thread during the measured call,
  minus the resident size before it (so it is the call's own growth, not the process's baseline).
* Storage: bytes a method must keep per example to score new queries (reported by each method).

One-off costs (stocking the teacher's gradients, training the student, fitting a preconditioner) are
kept apart from per-example inference costs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

__all__ = ["rss_bytes", "PeakRSS", "count_flops", "measure"]


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return 0


class PeakRSS:
    """Context manager: ``.peak_delta`` = max sampled RSS during the block minus RSS at entry (bytes)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def peak_delta(self) -> int:
        return max(0, self.peak - self.start)


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` under FlopCounterMode; returns (total FLOPs counted, fn's result)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn()
    return int(fc.get_total_flops()), out


def measure(fn: Callable[[], Any], *, flops: bool = True) -> dict:
    """Seconds, FLOPs (or None) and peak RSS growth of one call of ``fn``; ``result`` holds its return value."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if flops:
            n, out = count_flops(fn)
        else:
            n, out = None, fn()
        dt = time.perf_counter() - t0
    return {"seconds": dt, "flops": n, "peak_rss_delta_bytes": mem.peak_delta, "result": out}
