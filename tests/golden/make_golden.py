"""Regenerate tests/golden/summaries.json, the seed-0 results that tests/test_golden.py pins.

Run it on the code whose results are to be pinned, i.e. a clean checkout of the commit before a
change that must not change any result, never on the working tree under change:

    git worktree add /tmp/golden-head <commit>
    PYTHONPATH=/tmp/golden-head/src python tests/golden/make_golden.py
    git worktree remove --force /tmp/golden-head

(`git archive <commit> | tar -x -C /tmp/golden-head` works as well.) The script prints which
deepstep it imported: check that it is the one under /tmp/golden-head. It trains every case twice
in this one process, in a fresh $DEEPSTEP_CACHE (so that a feature classifier of samples/frechet
cached by other code is not used), and stops without writing if the two runs of a case differ.
About 2 minutes on a busy 2-core CPU (`--repeat 1`: half of that).

Pinned per case: the deterministic numeric results of summary.json (test/, val/, eval/,
baseline/, samples/, best/ keys, epochs, best_epoch), not timings, device or versions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("summaries.json")
# Every case runs on one thread (determinism) and is shortened to keep the golden test near a
# minute: no per-epoch val/frechet, and samples/frechet on 500 test digits only.
CASES = [
    ("digits-mlp", ["train.threads=1"]),  # the full recipe
    ("digits-cnn", ["train.threads=1", "train.epochs=10"]),
    ("mnist1d-gru", ["train.threads=1", "train.epochs=3"]),
    ("sunspots-lstm", ["train.threads=1", "train.epochs=20"]),
    ("digits-vae", ["train.threads=1", "train.epochs=10", "gen.eval_samples=0", "gen.test_samples=0"]),
    ("digits-gan", ["train.threads=1", "train.epochs=30", "gen.eval_samples=0", "gen.test_samples=500"]),
    ("cartpole-ppo", ["train.threads=1", "train.epochs=2", "env.steps_per_epoch=1536"]),
]
PREFIXES = ("test/", "val/", "eval/", "baseline/", "samples/", "best/")
KEYS = ("epochs", "best_epoch")


def pinned(summary: dict) -> dict:
    """The deterministic numeric results of a summary."""
    return {k: v for k, v in summary.items()
            if (k.startswith(PREFIXES) or k in KEYS)
            and isinstance(v, int | float) and not isinstance(v, bool)}


def source_commit(package_dir: Path) -> str:
    """The commit of the checkout holding `package_dir`, '+dirty' if its src/ has changes."""
    try:
        git = ["git", "-C", str(package_dir)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON file to write (default {OUT})")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case that must agree (default 2)")
    args = ap.parse_args()

    cache = tempfile.mkdtemp(prefix="deepstep-golden-cache-")
    os.environ["DEEPSTEP_CACHE"] = cache
    import deepstep

    package_dir = Path(deepstep.__file__).resolve().parent
    commit = source_commit(package_dir)
    print(f"deepstep from {package_dir} (commit {commit}), DEEPSTEP_CACHE={cache}", flush=True)
    cases, failed, versions = [], [], {}
    try:
        with tempfile.TemporaryDirectory(prefix="deepstep-golden-runs-") as runs:
            for recipe, overrides in CASES:
                results = []
                for i in range(args.repeat):
                    run_dir = Path(runs) / f"{recipe}-{i}"
                    # fp32, as tests/test_golden.py runs every case (the default "auto" may pick bf16)
                    summary = deepstep.train(recipe, overrides + ["train.precision=fp32"], run_dir=run_dir,
                                             verbose=0).summary
                    versions = versions or summary.get("versions", {})
                    results.append(pinned(summary))
                    print(f"{recipe} run {i + 1}: {json.dumps(results[-1])}", flush=True)
                if any(r != results[0] for r in results[1:]):
                    failed.append(recipe)
                    print(f"{recipe}: NOT reproducible between identical runs", flush=True)
                cases.append({"recipe": recipe, "overrides": overrides, "summary": results[0]})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if failed:
        print(f"not written: {', '.join(failed)} differ between identical runs", file=sys.stderr)
        return 1
    doc = {
        "about": "seed-0 results pinned by tests/test_golden.py; regenerate with tests/golden/make_golden.py",
        "commit": commit,
        "versions": versions,
        "cases": cases,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
