"""Fuzz tests (issue 15): random `--set` values over every option, random bytes and random shapes
into every file loader and into `predict`. Each case must end in success (exit 0) or in exit 2
with one `error:` paragraph — never in another exception. And a seeded fault test: training is
killed (SIGKILL) at a random atomic write — checkpoints included — or mid-epoch, then resumed,
and must end exactly as the uninterrupted run.

Examples are few (`max_examples`) and derandomized, so CI runs the same cases in well under a
minute (the fault test, which starts processes, about half a minute more)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli_env
from deepstep import cli
from deepstep.config import all_sections
from deepstep.registry import model_options

FAST = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TINY = ["--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "train.threads=1", "--quiet"]

# --- values ------------------------------------------------------------------------------------

def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.integers(-3, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 0.5, 1e6, 1e-9]))
NUMBER_TEXT = NUMBERS.map(lambda v: repr(v) if isinstance(v, int) else {"nan": "nan", "inf": "inf", "-inf": "-inf"}
                          .get(str(v), repr(v)))
VALUE_TEXT = st.one_of(
    NUMBER_TEXT,
    st.sampled_from(["true", "false", "''", "[]", "{}", "[1, 2]", "[-1]", "[0.5, 2]", "'auto'", "cpu", "bf16"]),
    st.text(max_size=12).map(_toml_string),
    st.text(alphabet="abcxyz_-./0123456789[]{}=,'\" ", max_size=10),  # also broken TOML
    st.lists(NUMBER_TEXT, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
)

OPTIONS = sorted({f"{s}.{f.name}" for s, cls in all_sections().items() for f in fields(cls)}
                 | {f"model.{k}" for k in model_options("mlp")} | {"model.name", "task", "expect.test/acc"})


def ends_cleanly(rc: int, err: str) -> None:
    assert rc in (0, 2), f"exit {rc}: {err}"
    assert "Traceback" not in err, err
    if rc == 2:
        assert "error:" in err and err.strip(), err
        assert "allow_pickle" not in err and "weights_only" not in err, err


def main(capsys, *args) -> tuple[int, str]:
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


# --- random --set values -------------------------------------------------------------------

@settings(FAST, max_examples=250)
@given(key=st.sampled_from(OPTIONS), value=VALUE_TEXT)
def test_random_set_values_resolve_or_exit_2(key, value, capsys):
    ends_cleanly(*main(capsys, "train", "digits-mlp", "--dry-run", "--set", f"{key}={value}"))


# trained for real, on 120 digits for one epoch: what the config accepts, the run must survive
TRAINED = [k for k in OPTIONS if k.split(".")[0] in ("data", "optim", "sched", "train", "model")
           and k not in ("train.epochs", "train.compile", "train.threads", "train.device", "data.stream",
                         "data.workers", "data.download", "data.image_size", "data.name", "data.path", "model.name",
                         "train.deterministic", "train.eval_batch_size", "data.limit")]


@settings(FAST, max_examples=12)
@given(key=st.sampled_from(TRAINED), value=st.one_of(NUMBER_TEXT, st.lists(NUMBER_TEXT, max_size=2).map(
    lambda xs: "[" + ", ".join(xs) + "]"), st.sampled_from(["true", "false", "'x'"])))
def test_random_values_that_are_accepted_train(key, value, capsys):
    with tempfile.TemporaryDirectory() as d:
        ends_cleanly(*main(capsys, "train", "digits-mlp", *TINY, "--set", "data.limit=120", "--set",
                           f"{key}={value}", "--run-dir", Path(d) / "run"))


# --- random bytes and shapes into the loaders ---------------------------------------------------

LOADERS = {  # data.name -> (recipe, file or folder layout)
    "csv": ("digits-mlp", "table.csv"),
    "npz": ("digits-mlp", "arrays.npz"),
    "npy": ("digits-mlp", "folder/x.npy"),
    "images": ("digits-mlp", "folder/a/1.png"),
    "jsonl": ("fortunes-lstm", "texts.jsonl"),
    "csv-text": ("fortunes-lstm", "texts.csv"),
    "series": ("sunspots-lstm", "series.csv"),
    "series-npy": ("sunspots-lstm", "series.npy"),
}


def _train_on(capsys, root: Path, name: str, target: Path) -> None:
    recipe, _ = LOADERS[name]
    data = {"npy": "npz", "csv-text": "csv", "series-npy": "series"}.get(name, name)
    path = target.parent.parent if name == "images" else target.parent if name == "npy" else target
    extra = ["--set", "model.hidden=[8]"] if recipe == "digits-mlp" else ["--set", "model.hidden_size=8"]
    ends_cleanly(*main(capsys, "train", recipe, "--set", "train.epochs=1", "--set", "train.threads=1", "--quiet",
                       *extra, "--set", f"data.name={data}", "--set", f"data.path={path}",
                       "--run-dir", root / "run"))


@settings(FAST, max_examples=40)
@given(name=st.sampled_from(sorted(LOADERS)), data=st.binary(max_size=300),
       header=st.sampled_from([b"", b"a,b,label\n", b"text,label\n", b"\x93NUMPY", b"PK\x03\x04",
                               b"\x89PNG\r\n\x1a\n", b'{"text": "x", "label": 1}\n']))
def test_random_bytes_into_every_loader(name, data, header, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        target = root / LOADERS[name][1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(header + data)
        if name == "npy":
            np.save(target.parent / "y.npy", np.arange(4) % 2)
        if name == "images":
            (root / "folder" / "b").mkdir()
            (root / "folder" / "b" / "2.png").write_bytes(data)
        _train_on(capsys, root, name, target)


DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.int8, np.complex64, "U2"])
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple)


def _array(dtype, shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape) * 3
    if dtype == "U2":
        return a.astype(int).astype("U2")
    return a.astype(dtype)


@settings(FAST, max_examples=25)
@given(xd=DTYPES, xs=SHAPES, yd=DTYPES, ys=SHAPES, seed=st.integers(0, 9), as_folder=st.booleans())
def test_random_shapes_into_npz(xd, xs, yd, ys, seed, as_folder, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        x, y = _array(xd, xs, seed), _array(yd, ys, seed + 1)
        if as_folder:
            (root / "folder").mkdir()
            np.save(root / "folder" / "x.npy", x)
            np.save(root / "folder" / "y.npy", y)
            _train_on(capsys, root, "npy", root / "folder" / "x.npy")
        else:
            np.savez(root / "arrays.npz", x=x, y=y)
            _train_on(capsys, root, "npz", root / "arrays.npz")


@settings(FAST, max_examples=10)
@given(sizes=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=1, max_size=4),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1"]))
def test_random_images_into_the_image_folder(sizes, mode, capsys):
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for i, (w, h) in enumerate(sizes):
            folder = root / "folder" / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (w, h)).save(folder / f"{i}.png")
        _train_on(capsys, root, "images", root / "folder" / "a" / "0.png")


# --- random inputs into predict -------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "run"
    assert cli.main(["train", "digits-mlp", *TINY, "--run-dir", str(path)]) == 0
    return path


@settings(FAST, max_examples=40)
@given(suffix=st.sampled_from([".npy", ".png", ".csv", ".jpg", ".txt", ".npz"]), data=st.binary(max_size=400),
       header=st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x89PNG\r\n\x1a\n", b"a,b\n1,2\n"]))
def test_random_bytes_into_predict(finished, suffix, data, header, capsys):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"input{suffix}"
        f.write_bytes(header + data)
        ends_cleanly(*main(capsys, "predict", finished, f))


@settings(FAST, max_examples=30)
@given(dtype=DTYPES, shape=SHAPES, seed=st.integers(0, 9), special=st.sampled_from([None, np.nan, np.inf]))
def test_random_arrays_into_predict(finished, dtype, shape, seed, special, capsys):
    with tempfile.TemporaryDirectory() as d:
        a = _array(dtype, shape, seed)
        if special is not None and a.dtype.kind == "f" and a.size:
            a.flat[seed % a.size] = special
        np.save(Path(d) / "x.npy", a)
        rc, err = main(capsys, "predict", finished, Path(d) / "x.npy")
        ends_cleanly(rc, err)
        if special is not None and a.dtype.kind == "f" and a.size:
            assert rc == 2  # never "0 (nan)"


@settings(FAST, max_examples=30)
@given(suffix=st.sampled_from([".txt", ".csv", ".jsonl"]), data=st.binary(max_size=300))
def test_random_bytes_into_text_inputs(suffix, data):
    from deepstep.config import DataConfig
    from deepstep.data.text import read_texts
    from deepstep.errors import UserError

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"input{suffix}"
        f.write_bytes(data)
        try:
            texts, names, _ = read_texts([str(f)], DataConfig(), ["a", "b"])
        except UserError as e:
            assert str(e)
        else:
            assert texts and all("\x00" not in t for t in texts) and len(names) == len(texts)


# --- seeded faults: killed at random moments, resumed exactly ---------------------------------

DRIVER = textwrap.dedent("""
    import os, signal, sys
    point, n = sys.argv[1], int(sys.argv[2])
    count = [0]
    def kill_at(name, real):
        def wrapped(*args, **kwargs):
            if name == point:
                count[0] += 1
                if count[0] == n:
                    if name == "replaced":  # after the rename: the new file is in place, the folder not synced
                        real(*args, **kwargs)
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapped
    from deepstep.engine import checkpoint
    from deepstep.plugins import metrics
    # inside atomic_write: before the data reach the disk, before the rename, after it
    os.fsync = kill_at("fsync", os.fsync)
    os.replace = kill_at("replace", kill_at("replaced", os.replace))
    metrics.append_line = kill_at("log", metrics.append_line)  # mid-epoch, while metrics are written
    from deepstep import cli
    sys.exit(cli.main(sys.argv[3:]))
""")
FAULT_RUN = ["train", "digits-mlp", "--set", "train.epochs=4", "--set", "model.hidden=[16]", "--set",
             "train.threads=1", "--set", "train.log_every=10", "--quiet"]


def _py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def _result(run: Path) -> tuple:
    s = json.loads((run / "summary.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return s["epochs"], s["test/acc"], s["test/loss"], s.get("best_epoch"), lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    p = _py("-m", "deepstep", *FAULT_RUN, "--run-dir", "run", cwd=root)
    assert p.returncode == 0, p.stderr
    return _result(root / "run")


@settings(FAST, max_examples=4)
@given(point=st.sampled_from(["fsync", "replace", "replaced", "log"]), n=st.integers(1, 12))
def test_killed_at_a_random_moment_resumes_exactly(reference, point, n):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "driver.py").write_text(DRIVER)
        p = _py("driver.py", point, str(n), *FAULT_RUN, "--run-dir", "run", cwd=root)
        assert p.returncode == -9, p.stderr  # each point happens more than 12 times in this run
        for _ in range(3):  # resume until finished (a kill before config.toml was written: train again)
            if (root / "run" / "summary.json").is_file():
                break
            cmd = ["resume", "run", "--quiet"] if (root / "run" / "config.toml").is_file() else [*FAULT_RUN[:1],
                                                                                              *FAULT_RUN[1:], "--run-dir", "run"]
            p = _py("-m", "deepstep", *cmd, cwd=root)
            assert p.returncode == 0, p.stderr
        assert _result(root / "run") == reference
        assert not list((root / "run").glob(".*.tmp"))
