"""Exact resume whatever the timing: `influcoder run` killed with SIGKILL at every named point of training
(influcoder.core.killpoints), then the same command again, gives the scores of an uninterrupted run — bit for bit
in the attribution and the filter, to 1e-5 in the report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from influcoder.run.config import RunConfig
from influcoder.core.config import from_dict
from influcoder.run.pipeline import Pipeline

from test_pipeline import assert_same, config_dict, scores, tiny  # noqa: F401  (tiny: a fixture)

POINTS = ["train:layer-cache", "train:warm-up", "train:step@1", "train:step@3", "train:validated@1",
          "train:checkpoint@1", "train:validated@2", "train:checkpoint@2", "train:trees", "save:swap", "train:saved",
          "train:done", "run:train"]


def _run(folder, env_extra=None):
    cfg = folder.parent / f"{folder.name}.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("INFLUCODER_KILL_AT", None) if not env_extra else None
    return subprocess.run([sys.executable, "-m", "influcoder", "run", str(cfg), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tiny, tmp_path_factory):  # noqa: F811
    """A run folder whose steps up to the labels are done (the training data of every kill below), and the
    scores of an uninterrupted run from it (a subprocess, like the killed ones)."""
    root = tmp_path_factory.mktemp("resume")
    base = root / "base"
    # the layer cache (1 of 2 layers frozen), the prior warm-up and the boosted prior all on
    d = config_dict(tiny, base, student={"prior_warmup_steps": 40, "prior_warmup_eval": 10, "freeze_layers": 1})
    Pipeline(from_dict(RunConfig, d), progress=False).run(["labels"])

    def clone(name: str):
        out = root / name
        shutil.copytree(base, out)
        (root / f"{name}.yaml").write_text(yaml.safe_dump({**d, "out": str(out)}))
        return out

    ref = clone("ref")
    r = _run(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    return clone, scores(ref)


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_a_named_point_then_the_same_command(prepared, point):
    clone, ref = prepared
    out = clone(point.replace(":", "-").replace("@", "-"))
    r = _run(out, {"INFLUCODER_KILL_AT": point})
    assert r.returncode == -9, f"{point} was not reached (rc {r.returncode}): {r.stderr[-2000:]}"
    step = point.split(":")[1] if point.startswith("run:") else "train"
    assert not (out / "steps" / f"{step}.json").exists()
    r = _run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(ref, scores(out))
