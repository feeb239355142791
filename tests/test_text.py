"""Text classification: tokenizers (built on the training split only, unknown token, truncation and
padding, JSON round trip), the text data sets on small files written here in each layout
(fortunes-like topic files, aclImdb folders and archive, CSV, JSONL), their user errors, the
TF-IDF baseline in the summary, and `deepstep train` + `deepstep predict RUN "text"` end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deepstep.config import DataConfig, load_config
from deepstep.data.text import read_texts
from deepstep.data.tokenize import Tokenizer
from deepstep.engine.runtime import Runtime
from deepstep.errors import UserError
from deepstep.registry import DATASETS, TASKS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path / "cache"))


def load(name: str, path, **kw):
    return DATASETS.get(name)(DataConfig(name=name, path=str(path), **kw))


# Two topics whose words never overlap, so a tiny model separates them in a few epochs.
SPACE = "rocket orbit planet moon star comet galaxy launch astronaut telescope".split()
KITCHEN = "bread butter oven flour sugar recipe soup pepper garlic onion".split()


def sentences(words, n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(n)]


def write_csv(path: Path, texts, labels, text="text", label="label"):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([label, "id", text])
        for i, (t, y) in enumerate(zip(texts, labels)):
            w.writerow([y, i, t])


def two_topics(n=40, seed=0):
    texts = sentences(SPACE, n, seed) + sentences(KITCHEN, n, seed + 1)
    return texts, ["space"] * n + ["kitchen"] * n


# --- tokenizer ------------------------------------------------------------------------------

def test_word_vocabulary_by_frequency_with_min_freq_and_max_size():
    tok = Tokenizer.fit(["b a a c", "A b a d"], min_freq=2)
    assert tok.vocab == ["<pad>", "<unk>", "a", "b"]  # 'a' x4 (lower-cased), 'b' x2; c, d seen once
    assert Tokenizer.fit(["b a a c", "A b a d"], min_freq=1, max_vocab=3).vocab == ["<pad>", "<unk>", "a", "b", "c"]
    assert Tokenizer.fit(["A a"], lowercase=False).vocab == ["<pad>", "<unk>", "A", "a"]


def test_unknown_truncation_and_padding():
    tok = Tokenizer.fit(["the cat sat", "the dog sat"], max_length=4)
    ids = tok.encode(["the bird sat", "the cat the dog sat sat", ""])
    assert ids.shape == (3, 4) and ids.dtype == np.int64
    the, sat, cat, dog = (tok.index[w] for w in ("the", "sat", "cat", "dog"))
    assert ids[0].tolist() == [the, 1, sat, 0]  # unknown 'bird' -> 1, padded with 0
    assert ids[1].tolist() == [the, cat, the, dog]  # truncated to 4
    assert ids[2].tolist() == [0, 0, 0, 0]
    assert Tokenizer.fit(["a b c", "a"]).max_length == 3  # 0: the longest training text


def test_word_splitting_html_breaks_and_punctuation():
    tok = Tokenizer.fit([])
    assert tok.split("Don't stop!<br /><br />It's GREAT, 10/10.") == [
        "don't", "stop", "!", "it's", "great", ",", "10", "/", "10", "."]


def test_char_tokenizer():
    tok = Tokenizer.fit(["abba  c", "ab"], kind="char", min_freq=1)
    assert tok.vocab[:4] == ["<pad>", "<unk>", "a", "b"] and set(tok.vocab[4:]) == {" ", "c"}
    assert tok.split("A\n\tB") == ["a", " ", "b"]
    assert tok.decode(tok.encode(["abz"])[0]) == "ab<unk>"


def test_tokenizer_json_round_trip_gives_the_same_ids(tmp_path):
    texts = sentences(SPACE + KITCHEN, 30, 0)
    tok = Tokenizer.fit(texts, min_freq=2, max_length=6)
    (tmp_path / "t.json").write_text(json.dumps(tok.to_dict()))
    again = Tokenizer.from_dict(json.loads((tmp_path / "t.json").read_text()))
    probe = texts + ["an unseen text about rockets"]
    np.testing.assert_array_equal(again.encode(probe), tok.encode(probe))
    with pytest.raises(UserError, match="not a deepstep tokenizer"):
        Tokenizer.from_dict({"kind": "word"})


def task_for(tmp_path, texts, labels, *overrides):
    write_csv(tmp_path / "d.csv", texts, labels)
    cfg = load_config("fortunes-lstm", ["data.name=csv", f"data.path={tmp_path / 'd.csv'}", "train.epochs=1",
                                        "data.min_freq=1", *overrides])
    return TASKS.get("classify")(cfg, Runtime(device="cpu", seed=0))


def test_vocabulary_comes_from_the_training_part_only(tmp_path):
    texts, labels = two_topics(20)
    texts[-1] = texts[-2] = "zebra zebra"  # kitchen texts; where they land depends on the split
    task = task_for(tmp_path, texts, labels, "data.val_split=0.25", "data.test_split=0.25")
    train = {t for s in task.texts["train"][0] for t in s.split()}
    assert set(task.tokenizer.vocab[2:]) == train
    held_out = {t for part in ("val", "test") for s in task.texts[part][0] for t in s.split()}
    for word in held_out - train:
        assert word not in task.tokenizer.index
    assert task.data["train"].x.dtype == task.data["test"].x.dtype == np.int64 or str(
        task.data["train"].x.dtype) == "torch.int64"
    assert task.meta["kind"] == "text" and task.meta["vocab_size"] == task.tokenizer.vocab_size


def test_non_sequence_model_on_text_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"Model 'mlp' reads numbers, not token ids.*lstm"):
        task_for(tmp_path, *two_topics(10), "model.name=mlp")


def test_tfidf_baseline_sees_punctuation_tokens_and_never_the_test_labels():
    from deepstep.tasks.baselines import tfidf_logreg

    rng = np.random.default_rng(0)
    words = "we you they go see run eat".split()

    def make(n):  # the class is only in the final mark: '!' or '?'
        y = rng.integers(0, 2, n)
        return [" ".join(rng.choice(words, 4)) + ("!" if c else "?") for c in y], y

    (x, y), (xv, yv), (xt, yt) = make(60), make(20), make(30)
    pred = tfidf_logreg(x, y, xt, val=(xv, yv))
    assert pred.shape == yt.shape and (pred == yt).all()
    assert (tfidf_logreg(x, 1 - y, xt) == 1 - yt).all()  # follows the training labels, not a fixed rule


# --- data sets ------------------------------------------------------------------------------

def write_fortunes(folder: Path, topics=("space", "kitchen"), n=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(topics):
        words = SPACE if i % 2 == 0 else KITCHEN
        entries = sentences(words, n, i)
        entries[0] = "_\b" + "U_\bn_\bd_\be_\br_\bl_\bi_\bn_\be_\bd " + entries[0]  # over-striking
        (folder / t).write_text("%\n" + "\n%\n".join(entries) + "\n%\n")


def test_fortunes_layout(tmp_path):
    write_fortunes(tmp_path / "f")
    d = load("fortunes", tmp_path / "f", topics=["kitchen", "space"])
    assert d.kind == "text" and d.classes == ["kitchen", "space"] and d.x_test is None
    assert len(d.x_train) == 24 and np.bincount(d.y_train).tolist() == [12, 12]
    assert all(isinstance(t, str) and t and "%" not in t and "\b" not in t for t in d.x_train)
    assert any(t.startswith("Underlined ") for t in d.x_train)
    assert len(load("fortunes", tmp_path / "f", topics=["kitchen", "space"], limit=10).x_train) == 10


def test_fortunes_errors(tmp_path):
    write_fortunes(tmp_path / "f")
    with pytest.raises(UserError, match=r"no fortunes topic 'sport'.*Topics there: kitchen, space"):
        load("fortunes", tmp_path / "f", topics=["space", "sport"])
    (tmp_path / "f" / "empty").write_text("%\n\n%\n")
    with pytest.raises(UserError, match=r"empty\W+ is empty"):
        load("fortunes", tmp_path / "f", topics=["space", "empty"])
    with pytest.raises(UserError, match="at least two"):
        load("fortunes", tmp_path / "f", topics=["space"])


def test_the_installed_fortunes_package_has_the_default_topics():
    from deepstep.data.text import FORTUNE_TOPICS, FORTUNES_DIR

    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian package 'fortunes' is not installed")
    d = DATASETS.get("fortunes")(DataConfig(name="fortunes"))
    assert d.classes == FORTUNE_TOPICS and len(d.x_train) > 2000
    assert np.bincount(d.y_train).min() > 200


def write_aclimdb(root: Path, n=3) -> Path:
    for split in ("train", "test"):
        for label, words in (("pos", SPACE), ("neg", KITCHEN)):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i, text in enumerate(sentences(words, n, hash(split + label) % 100)):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(text + "<br /><br />The end.")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("ignored")
    return root / "aclImdb"


def test_imdb_folder_layout(tmp_path):
    folder = write_aclimdb(tmp_path)
    for path in (folder, tmp_path):  # the folder or its parent
        d = load("imdb", path)
        assert d.classes == ["neg", "pos"] and len(d.x_train) == 6 and len(d.x_test) == 6
        assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert "<br" in d.x_train[0] and "br" not in Tokenizer.fit(d.x_train).vocab


def test_imdb_archive_is_extracted_by_name_only(tmp_path):
    folder = write_aclimdb(tmp_path / "src")
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
        evil = tarfile.TarInfo("aclImdb/train/pos/../../../../evil.txt")
        payload = b"escaped"
        evil.size = len(payload)
        tar.addfile(evil, io.BytesIO(payload))
    d = load("imdb", archive)
    assert len(d.x_train) == 6 and len(d.x_test) == 6
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "cache" / "imdb" / "aclImdb" / "train" / "unsup").exists()


def test_imdb_errors(tmp_path):
    folder = write_aclimdb(tmp_path)
    (folder / "train" / "pos" / "9_9.txt").write_text("  \n")
    with pytest.raises(UserError, match=r"9_9\.txt' is empty"):
        load("imdb", folder)
    with pytest.raises(UserError, match="not in the aclImdb layout"):
        load("imdb", folder / "train")
    with pytest.raises(UserError, match=r"downloads are off.*aclImdb_v1\.tar\.gz"):
        DATASETS.get("imdb")(DataConfig(name="imdb", download=False))


def test_imdb_download_checks_the_md5(tmp_path, monkeypatch):
    """The archive is fetched from a mirror and accepted only with the right checksum."""
    import functools
    import hashlib
    import http.server
    import threading

    from deepstep.data import text

    www = tmp_path / "www"
    folder = write_aclimdb(tmp_path / "src")
    www.mkdir()
    with tarfile.open(www / "aclImdb_v1.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        mirror = f"http://127.0.0.1:{httpd.server_address[1]}/"
        monkeypatch.setitem(text.IMDB, "mirrors", [mirror])
        monkeypatch.setitem(text.IMDB, "md5", "0" * 32)
        with pytest.raises(UserError, match="checksum"):
            DATASETS.get("imdb")(DataConfig(name="imdb"))
        assert not (tmp_path / "cache" / "imdb" / "aclImdb_v1.tar.gz").exists()
        monkeypatch.setitem(text.IMDB, "md5", hashlib.md5((www / "aclImdb_v1.tar.gz").read_bytes()).hexdigest())
        d = DATASETS.get("imdb")(DataConfig(name="imdb"))
        assert len(d.x_train) == 6 and (tmp_path / "cache" / "imdb" / "aclImdb" / "test" / "neg").is_dir()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_csv_text_file_and_folder(tmp_path):
    texts, labels = two_topics(5)
    write_csv(tmp_path / "d.csv", texts, labels)
    d = load("csv", tmp_path / "d.csv")
    assert d.kind == "text" and d.classes == ["kitchen", "space"] and list(d.x_train) == texts
    assert d.y_train.tolist() == [1] * 5 + [0] * 5
    (tmp_path / "f").mkdir()
    write_csv(tmp_path / "f" / "train.csv", texts, labels, text="review", label="y")
    write_csv(tmp_path / "f" / "test.csv", texts[:2], labels[:2], text="review", label="y")
    d = load("csv", tmp_path / "f", text_column="review", label_column="y")
    assert len(d.x_test) == 2 and d.y_test.tolist() == [1, 1]


def test_csv_numeric_tables_still_work(tmp_path):
    (tmp_path / "n.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    d = load("csv", tmp_path / "n.csv")
    assert d.kind == "table" and d.x_train.shape == (2, 2)


def test_jsonl_file_and_folder(tmp_path):
    texts, labels = two_topics(4)
    lines = [json.dumps({"text": t, "label": y, "extra": 1}) for t, y in zip(texts, labels)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")
    d = load("jsonl", tmp_path / "d.jsonl")
    assert d.kind == "text" and list(d.x_train) == texts and d.classes == ["kitchen", "space"]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "train.jsonl").write_text("\n".join(json.dumps({"body": t, "stars": i % 2}) for i, t in enumerate(texts)))
    (tmp_path / "f" / "test.jsonl").write_text(json.dumps({"body": "moon", "stars": 1}))
    d = load("jsonl", tmp_path / "f", text_column="body", label_column="stars")
    assert d.classes == [] and d.y_train.dtype == np.int64 and d.y_test.tolist() == [1]


@pytest.mark.parametrize("name,content,needle", [
    ("csv", "", "is empty"),
    ("csv", "text,label\n", "has a header but no rows"),
    ("csv", "body,label\nhello,a\n", "set data.text_column to the column holding the text (now 'text'"),
    ("csv", "text,topic\nhello,a\n", "has no column 'label'"),
    ("csv", "text,label\n  ,a\n", "line 2: the text column 'text' is empty"),
    ("csv", "text,label\nhello,a,b\n", "line 2: 3 fields"),
    ("jsonl", "", "is empty"),
    ("jsonl", '{"text": "hi", "label": 1}\n{"text": "hi"\n', "line 2: not valid JSON"),
    ("jsonl", '{"body": "hi", "label": 1}\n', "has no key (line 1) 'text'"),
    ("jsonl", '{"text": 3, "label": 1}\n', "must be a string"),
])
def test_text_file_errors(tmp_path, name, content, needle):
    f = tmp_path / f"d.{name}"
    f.write_text(content)
    with pytest.raises(UserError) as e:
        load(name, f)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_csv_numeric_column_with_text_hints_at_text_column(tmp_path):
    (tmp_path / "d.csv").write_text("review,label\nnice film,1\n")
    with pytest.raises(UserError, match="data.text_column"):
        load("csv", tmp_path / "d.csv")


def test_unknown_label_in_test_file(tmp_path):
    (tmp_path / "f").mkdir()
    write_csv(tmp_path / "f" / "train.csv", *two_topics(3))
    write_csv(tmp_path / "f" / "test.csv", ["moon rocket"], ["garden"])
    with pytest.raises(UserError, match=r"test\.csv' line 2: label 'garden' does not occur"):
        load("csv", tmp_path / "f")


def test_predict_inputs(tmp_path):
    cfg = DataConfig()
    (tmp_path / "r.txt").write_text("a review\nover two lines")
    (tmp_path / "rows.jsonl").write_text('{"text": "moon", "label": "space"}\n{"text": "soup"}\n')
    texts, names, labels = read_texts(["plain words", str(tmp_path / "r.txt"), str(tmp_path / "rows.jsonl")],
                                      cfg, ["kitchen", "space"])
    assert texts == ["plain words", "a review\nover two lines", "moon", "soup"]
    assert names[1] == str(tmp_path / "r.txt") and names[2].endswith("rows.jsonl:line1")
    assert labels == [None, None, "space", None]
    with pytest.raises(UserError, match="does not exist"):
        read_texts(["missing.txt"], cfg, [])
    (tmp_path / "bad.csv").write_text("text,label\nmoon,garden\n")
    with pytest.raises(UserError, match="label 'garden' is not one this run knows"):
        read_texts([str(tmp_path / "bad.csv")], cfg, ["kitchen", "space"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_texts([str(tmp_path / "empty.txt")], cfg, [])


# --- end to end -----------------------------------------------------------------------------

def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    from conftest import cli_env

    return subprocess.run([sys.executable, "-m", "deepstep", *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A two-topic JSONL data set trained for a few epochs through the fortunes-lstm recipe."""
    cwd = tmp_path_factory.mktemp("text")
    texts, labels = two_topics(40)
    (cwd / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)))
    r = cli("train", "fortunes-lstm", "--set", "data.name=jsonl", "--set", "data.path=d.jsonl",
            "--set", "train.epochs=8", "--set", "train.batch_size=8", "--set", "model.hidden_size=16",
            "--set", "model.embed_dim=16",
            "--set", "data.min_freq=1", "--quiet", "--run-dir", "R", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, cwd / "R", r


def test_text_run_summary_has_the_baseline_and_the_tokenizer(text_run):
    cwd, run, r = text_run
    s = json.loads((run / "summary.json").read_text())
    for key in ("test/acc", "test/macro_f1", "baseline/tfidf_acc", "baseline/tfidf_macro_f1"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["baseline/tfidf_acc"] == 1.0  # the two vocabularies never overlap
    assert "baseline/tfidf_acc" in r.stdout
    tok = Tokenizer.from_dict(json.loads((run / "tokenizer.json").read_text()))
    meta = json.loads((run / "meta.json").read_text())
    assert meta["kind"] == "text" and meta["vocab_size"] == tok.vocab_size == 22  # 20 words + pad + unk
    assert meta["in_shape"] == [tok.max_length]


def test_saved_tokenizer_reproduces_the_training_ids(text_run, monkeypatch):
    cwd, run, _ = text_run
    monkeypatch.chdir(cwd)
    from deepstep.run import load_run

    loaded = load_run(run)
    task = TASKS.get("classify")(loaded.cfg, Runtime(device="cpu", seed=loaded.cfg.train.seed))
    np.testing.assert_array_equal(loaded.inference().tokenizer.encode(list(task.texts["test"][0])),
                                  task.data["test"].x.numpy())


def test_predict_raw_text_end_to_end(text_run):
    cwd, run, _ = text_run
    (cwd / "one.txt").write_text("garlic onion soup recipe")
    r = cli("predict", run, "the astronaut saw a comet from the rocket", "one.txt", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["top"][0]["class"] for row in rows] == ["space", "kitchen"]
    assert rows[0]["input"].startswith("the astronaut") and rows[1]["input"] == "one.txt"
    (cwd / "bad.csv").write_text("text,label\nmoon,garden\n")
    r = cli("predict", run, "bad.csv", cwd=cwd)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "label 'garden'" in r.stderr


def test_cli_text_data_errors_exit_2(tmp_path, monkeypatch, capsys):
    from deepstep.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("body,label\nhello,a\n")
    (tmp_path / "e.jsonl").write_text("")
    for path, needle in (("d.csv", "data.text_column"), ("e.jsonl", "is empty")):
        name = Path(path).suffix[1:]
        rc = main(["train", "fortunes-lstm", "--set", f"data.name={name}", "--set", f"data.path={path}", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and needle in err, err
