"""Named points where a test stops the process abruptly (SIGKILL), to prove that a rerun resumes exactly.

``INFLUCODER_KILL_AT=NAME`` (or ``NAME@N``: only its N-th pass, e.g. the epoch or step number) makes the
process kill itself with SIGKILL when it reaches :func:`kill_point` ``(NAME, N)`` — no cleanup, no ``finally``,
as ``kill -9`` or a power cut would. Unset (always, outside tests), a kill point costs one dictionary lookup.

The points (see tests/test_resume.py): ``train:layer-cache``, ``train:warm-up``, ``train:step@N`` (after
optimiser step N), ``train:validated@E`` (epoch E validated, before its checkpoint), ``train:checkpoint@E``
(after it), ``save:swap`` (inside the encoder's save: the old folder, training checkpoint included, moved
aside and the new one not yet in place — a rerun finds no checkpoint and trains again from the start, to the
same result), ``train:trees`` (boosted prior fitted, before the encoder is saved), ``train:saved`` (encoder
saved, checkpoint not yet removed), ``train:done`` (checkpoint removed), ``run:STEP`` (a run's step finished,
before its record is written).
"""

from __future__ import annotations

import os
import signal

ENV = "INFLUCODER_KILL_AT"


def kill_point(name: str, n: int | None = None) -> None:
    """SIGKILL this process if ``INFLUCODER_KILL_AT`` names this point (and, with ``@N``, this pass ``n``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if target != name or (count and (n is None or int(count) != int(n))):
        return
    os.kill(os.getpid(), signal.SIGKILL)
