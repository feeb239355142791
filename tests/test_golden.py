"""Golden results: short seed-0 runs of several recipes (tests/golden/summaries.json, pinned on the
code before the engine refactor) must give the same summary numbers within 1e-6, so that a
change meant to keep every result (a refactor) can show that it did. Every case runs with
train.precision = "fp32" (the default is "auto"). A deliberate change of a
result regenerates the file with tests/golden/make_golden.py (see its docstring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deepstep

GOLDEN = json.loads((Path(__file__).parent / "golden" / "summaries.json").read_text())
CASES = GOLDEN["cases"]
NEEDS = {"cartpole-ppo": "gymnasium"}  # recipe -> module it needs beyond the core install


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c["recipe"] for c in CASES])
def test_golden_summary(case, tmp_path, monkeypatch):
    if case["recipe"] in NEEDS:
        pytest.importorskip(NEEDS[case["recipe"]])
    # a fresh cache, as when the file was made: the Fréchet feature classifier is trained inside
    # this case (with its one thread), not by whichever earlier test happened to need it first
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path / "cache"))
    # fp32 as when the file was made: train.precision = "auto" (the default since) picks bf16 for conv
    # nets on a CPU with native bf16, and "fp32" must still give these numbers bit for bit
    overrides = case["overrides"] + ["train.precision=fp32"]
    summary = deepstep.train(case["recipe"], overrides, run_dir=tmp_path / "run", verbose=0).summary
    bad = []
    for key, pinned in case["summary"].items():
        if key not in summary:
            bad.append(f"{key}: missing (pinned {pinned!r})")
        elif summary[key] != pytest.approx(pinned, rel=1e-6, abs=1e-6):
            bad.append(f"{key}: {summary[key]!r}, pinned {pinned!r}")
    assert not bad, (f"{case['recipe']} {' '.join(case['overrides'])} differs from the golden "
                     f"summary (commit {GOLDEN['commit'][:10]}) in {len(bad)} keys:\n  " + "\n  ".join(bad))
