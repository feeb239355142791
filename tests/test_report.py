"""report.html (plugins/report.py): built from the run directory alone, self-contained (no
network: every image a data URI), with the sections of the run's task; `deepstep report` writes
it again and compares runs; a headless Chromium renders it at phone width."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from deepstep.config import load_config
from deepstep.engine.fit import fit
from deepstep.plugins.report import flatten, write_comparison, write_report


def train(tmp_path_factory, recipe: str, *overrides: str) -> Path:
    path = tmp_path_factory.mktemp(recipe) / "r"
    fit(load_config(recipe, list(overrides)), run_dir=path, verbose=0)
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return train(tmp_path_factory, "digits-mlp", "train.epochs=3")


class Tags(HTMLParser):
    """The tags of a page in order (name, attributes) and its visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Tags:
    t = Tags()
    t.feed(path.read_text(encoding="utf-8"))
    return t


def structure(path: Path) -> list:
    """The page's tag sequence with ids and classes, data URIs and the footer's time left out."""
    return [(tag, a.get("id"), a.get("class")) for tag, a in parse(path).tags]


def assert_self_contained(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), "a network reference"
    assert "<script" not in text.lower()
    assert 'name="viewport"' in text
    imgs = [a for tag, a in parse(path).tags if tag == "img"]
    assert imgs, "no images"
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,"), a["src"][:60]
        assert a.get("alt")


def add_classes_fixture(run: Path, text: bool = False) -> None:
    """classes.json and predictions.npz as the classes plug-in writes them (made up here)."""
    rng = np.random.default_rng(0)
    meta = json.loads((run / "meta.json").read_text())
    classes = meta["classes"] or [str(i) for i in range(10)]
    c, n = len(classes), 200
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 3 * np.eye(c)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    confusion = np.zeros((c, c), int)
    np.add.at(confusion, (y, pred), 1)
    loss = -np.log(probs[np.arange(n), y])
    top = np.argsort(-loss)[:16]
    per = []
    for k in range(c):
        tp = confusion[k, k]
        p = tp / max(1, confusion[:, k].sum())
        r = tp / max(1, confusion[k].sum())
        per.append({"class": classes[k], "precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-9),
                    "support": int(confusion[k].sum())})
    worst = min(per, key=lambda d: d["f1"])
    conf = probs.max(1)
    edges = np.linspace(0, 1, 11)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        bins.append({"lo": lo, "hi": hi, "count": int(m.sum()),
                     "accuracy": float((pred[m] == y[m]).mean()) if m.any() else 0.0,
                     "confidence": float(conf[m].mean()) if m.any() else 0.0})
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / n
    off = [(confusion[i, j], i, j) for i in range(c) for j in range(c) if i != j and confusion[i, j]]
    doc = {"classes": classes, "per_class": per, "confusion": confusion.tolist(),
           "confusion_normalized": (confusion / np.maximum(confusion.sum(1, keepdims=True), 1)).tolist(),
           "most_confused": [{"true": classes[i], "predicted": classes[j], "count": int(v)}
                             for v, i, j in sorted(off, reverse=True)[:5]],
           "calibration": {"ece": ece, "bins": bins},
           "train_balance": {k: int(v) for k, v in zip(classes, rng.integers(70, 90, c))},
           "worst_class": {"class": worst["class"], "f1": worst["f1"],
                           "gap_to_mean": float(np.mean([d["f1"] for d in per]) - worst["f1"])}}
    (run / "classes.json").write_text(json.dumps(doc))
    arrays = {"probs": probs.astype(np.float32), "y": y, "top_loss_index": top, "top_loss_loss": loss[top]}
    if text:
        arrays["top_loss_x"] = rng.integers(0, 100, (16, 12))
        arrays["top_loss_text"] = np.array([f"<b>text {i}</b> & a long sentence" for i in range(16)])
    else:
        norm = meta["normalizer"]
        raw = rng.random((16, *meta["in_shape"]))
        arrays["top_loss_x"] = ((raw - norm["mean"][0]) / norm["std"][0]).astype(np.float32)
    np.savez(run / "predictions.npz", **arrays)


# --- one run --------------------------------------------------------------------------------------

def test_digits_report_has_targets_curves_and_no_network(mlp):
    page = mlp / "report.html"
    assert page.is_file(), "the report plug-in wrote no report.html"
    assert_self_contained(page)
    t = parse(page)
    text = " ".join(t.text)
    assert "digits-mlp" in text and "test/acc" in text and "≥ 0.97" in text
    summary = json.loads((mlp / "summary.json").read_text())
    assert ("NOT met" if not summary["expect"]["test/acc"]["met"] else "met") in text
    assert "50,826 parameters" in text  # counted from model.safetensors
    assert "train 808, val 90, test 899" in text
    ids = {a.get("id") for _, a in t.tags}
    assert {"curves", "results"} <= ids
    curves = page.read_text().split('id="curves"')[1].split("</section>")[0]
    assert curves.count("<img") >= 3  # loss, the monitored metric, the learning rate
    assert "Training and validation loss per epoch" in text and "val/acc per epoch (monitored)" in text


def test_cli_rebuilds_the_same_report(mlp, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    (copy / "report.html").unlink()
    r = subprocess.run([sys.executable, "-m", "deepstep", "report", str(copy)], env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == copy / "report.html"
    assert structure(copy / "report.html") == structure(mlp / "report.html")
    assert_self_contained(copy / "report.html")


def test_cli_errors(tmp_path, mlp):
    r = subprocess.run([sys.executable, "-m", "deepstep", "report", str(tmp_path)], env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "not a deepstep run directory" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "config.toml").write_text((mlp / "config.toml").read_text())
    r = subprocess.run([sys.executable, "-m", "deepstep", "report", str(tmp_path)], env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "no epoch records" in r.stderr and "Traceback" not in r.stderr


def test_strings_from_the_run_are_escaped(mlp, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["device"] = "<script>alert(1)</script>"
    summary["diagnosis"] = {"label": "overfitting <b>", "evidence": {"train/val gap": 0.42, "<i>": 1},
                            "remedies": ["deepstep train digits-mlp --set model.dropout=0.5 && echo '<x>'"]}
    page = write_report(copy, summary=summary)
    html = page.read_text()
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "overfitting &lt;b&gt;" in html and "&lt;i&gt;" in html
    assert "<code>deepstep train digits-mlp --set model.dropout=0.5 &amp;&amp; echo &#x27;&lt;x&gt;&#x27;</code>" in html
    assert 'id="diagnosis"' in html


def test_a_torchrun_run_says_how_many_processes_trained_it(mlp, tmp_path):
    from deepstep.plugins.report import notebook_summary

    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["world_size"] == 1
    assert "processes" not in " ".join(parse(write_report(copy)).text) and "processes" not in notebook_summary(copy)
    summary["world_size"] = 2
    text = " ".join(parse(write_report(copy, summary=summary)).text)
    assert f"{summary['device']} × 2 processes" in text
    assert f"training on {summary['device']} &times; 2 processes" in notebook_summary(copy, summary)


def test_classification_section_from_classes_files(mlp, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    add_classes_fixture(copy)
    page = write_report(copy)
    assert_self_contained(page)
    t = parse(page)
    text = " ".join(t.text)
    assert 'id="classes"' in page.read_text()
    for needle in ("Per class", "precision", "Most confused pairs", "Highest-loss test examples", "Worst class",
                   "class balance (train)", "Reliability diagram", "Normalized confusion matrix"):
        assert needle in text, needle
    gallery = [a for tag, a in t.tags if tag == "img" and a.get("class") == "pix"]
    assert len(gallery) == 16


def test_text_classification_gallery_shows_text(mlp, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    add_classes_fixture(copy, text=True)
    html = write_report(copy).read_text()
    assert "&lt;b&gt;text 3&lt;/b&gt; &amp; a long sentence" in html


# --- several runs and other tasks -----------------------------------------------------------------

def test_comparison_lists_the_differing_keys(tmp_path_factory, tmp_path):
    a = train(tmp_path_factory, "digits-mlp", "train.epochs=2", "model.dropout=0")
    b = train(tmp_path_factory, "digits-mlp", "train.epochs=2", "model.dropout=0.3")
    out = tmp_path / "cmp.html"
    r = subprocess.run([sys.executable, "-m", "deepstep", "report", str(a), str(b), "--out", str(out)], env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == out
    assert_self_contained(out)
    html = out.read_text()
    cfg = re.sub(r"<[^>]+>", "", html.split('id="config"')[1].split("</section>")[0])  # the text, <wbr> gone
    assert "model.dropout" in cfg and "train.epochs" not in cfg
    res = html.split('id="results"')[1]
    assert "test/acc" in res and "train_seconds" in res
    assert write_comparison([a, b], tmp_path / "again.html").is_file()


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_autoencoder_and_forecast_sections(tmp_path_factory):
    ae = train(tmp_path_factory, "digits-ae", "train.epochs=2")
    html = (ae / "report.html").read_text()
    assert_self_contained(ae / "report.html")
    assert 'id="pictures"' in html and "reconstructions" in html and "Latent codes" in html
    fc = train(tmp_path_factory, "sunspots-gru", "train.epochs=2")
    html = (fc / "report.html").read_text()
    assert_self_contained(fc / "report.html")
    assert 'id="forecast"' in html and "<th>persistence</th>" in html and "<th>arima</th>" in html


def test_report_is_fast(mlp, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(mlp, copy)
    write_report(copy)  # imports (matplotlib) once
    t = time.perf_counter()
    write_report(copy)
    assert time.perf_counter() - t < 3.0


# --- rendered ---------------------------------------------------------------------------------------

def test_renders_in_headless_chromium_at_phone_width(mlp, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium (scripts/setup.sh does it as root)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=420,1200", f"--screenshot={shot}",
                    (mlp / "report.html").resolve().as_uri()], capture_output=True, timeout=90)
    assert shot.is_file(), "chromium wrote no screenshot"
    im = Image.open(shot).convert("RGB")
    assert im.width == 420
    colours = im.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the page rendered (almost) blank"
    assert im.getextrema() != ((255, 255), (255, 255), (255, 255))


def test_a_failing_report_does_not_cost_the_run_its_summary(tmp_path, monkeypatch, capsys):
    import deepstep.plugins.report as report

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(report, "write_report", broken)
    run = fit(load_config("digits-mlp", ["train.epochs=1"]), run_dir=tmp_path / "r", verbose=0)
    assert (run.path / "summary.json").is_file() and not (run.path / "report.html").exists()
    assert "deepstep report" in capsys.readouterr().err
