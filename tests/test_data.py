"""Data loaders on small files written here in every supported format: IDX gzip, CIFAR-10 pickle
batches, .npz/.npy, CSV, image folders — good, truncated and corrupt — plus predict-input reading
and an end-to-end CLI run on a user CSV."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import idx_bytes, write_idx_set  # noqa: F401  (shared with test_cli)
from deepstep.config import DataConfig
from deepstep.data import cifar
from deepstep.data.inputs import read_inputs
from deepstep.errors import UserError
from deepstep.registry import DATASETS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path / "cache"))


def load(name: str, path, **kw):
    return DATASETS.get(name)(DataConfig(name=name, path=str(path), **kw))


# --- IDX ------------------------------------------------------------------------------------

def test_idx_good(tmp_path):
    arrays = write_idx_set(tmp_path / "m")
    d = load("mnist", tmp_path / "m")
    assert d.kind == "image" and d.x_train.shape == (12, 1, 5, 5) and d.x_test.shape == (4, 1, 5, 5)
    assert d.x_train.dtype == np.float32 and d.x_train.max() == 1.0 and d.x_train.min() >= 0.0
    np.testing.assert_allclose(d.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte.gz"], atol=1e-3)
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert d.y_train.dtype == np.int64
    assert len(load("mnist", tmp_path / "m", limit=5).x_train) == 5


def test_idx_truncated_payload(tmp_path):
    write_idx_set(tmp_path / "m")
    f = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-7]))
    with pytest.raises(UserError, match="truncated") as e:
        load("mnist", tmp_path / "m")
    assert str(f) in str(e.value) and "300 bytes" in str(e.value)


def test_idx_truncated_gzip_stream(tmp_path):
    write_idx_set(tmp_path / "m")
    f = tmp_path / "m" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserError, match="cannot be read as gzip") as e:
        load("mnist", tmp_path / "m")
    assert str(f) in str(e.value)


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path / "m")
    f = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(16)))  # 0x0d: float, not unsigned bytes
    with pytest.raises(UserError, match="bad magic") as e:
        load("mnist", tmp_path / "m")
    assert str(f) in str(e.value)


def test_idx_path_lacks_files(tmp_path):
    write_idx_set(tmp_path / "m")
    (tmp_path / "m" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="lacks t10k-images-idx3-ubyte.gz"):
        load("fashion-mnist", tmp_path / "m")


# --- CIFAR-10 -------------------------------------------------------------------------------

def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def py2_style(obj, protocol=2) -> bytes:
    """A pickle as the original (Python 2 / NumPy 1) files name things: numpy.core.multiarray."""
    return pickle.dumps(obj, protocol=protocol).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar(folder: Path, n=4, protocol=2, bytes_keys=True, meta=True) -> dict:
    """Five training batches and a test batch of `n` images each (20 training images for n=4)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(cifar.BATCHES):
        data, labels = cifar_batch(n, i)
        key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
        d = {key("batch_label"): key(f"batch {i}"), key("labels"): labels, key("data"): data,
             key("filenames"): [key(f"img{j}.png") for j in range(n)]}
        (folder / name).write_bytes(py2_style(d, protocol))
        out[name] = (data, labels)
    if meta:
        names = [c.upper() for c in cifar.CLASSES]
        d = {b"label_names": [c.encode() for c in names], b"num_cases_per_batch": n, b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_style(d, protocol))
    return out


@pytest.mark.parametrize("protocol,bytes_keys", [(2, True), (2, False), (5, False)])
def test_cifar_good(tmp_path, protocol, bytes_keys):
    written = write_cifar(tmp_path / cifar.FOLDER, protocol=protocol, bytes_keys=bytes_keys)
    d = load("cifar10", tmp_path)  # the parent of cifar-10-batches-py works too
    assert d.kind == "image" and d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.classes[0] == "AIRPLANE" and len(d.classes) == 10  # read from batches.meta
    data, labels = written["data_batch_1"]
    # each row is 1024 red, then 1024 green, then 1024 blue values, row-major 32x32
    np.testing.assert_allclose(d.x_train[0, 1, 0, 5], data[0, 1024 + 5] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x_train[1, 2, 3, 0], data[1, 2048 + 3 * 32] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train[:4], labels)
    np.testing.assert_array_equal(d.y_test, written["test_batch"][1])
    assert len(load("cifar10", tmp_path / cifar.FOLDER, limit=7).x_train) == 7


def test_cifar_without_meta_uses_documented_classes(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert load("cifar10", tmp_path).classes == cifar.CLASSES


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch opcode by opcode as Python 2 pickled the original files: protocol 2, str keys and
    the array's raw bytes as BINSTRING, NumPy 1 globals (numpy.core.multiarray._reconstruct)."""
    def short(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    raw = data.tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" b"cnumpy\nndarray\n" b"K\x00\x85" + short(b"b") + b"\x87R"
             + b"(K\x01M" + struct.pack("<H", len(data)) + b"M" + struct.pack("<H", 3072) + b"\x86"
             + b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + short(b"batch_label") + short(b"training batch 1 of 5") + short(b"data") + array
            + short(b"labels") + label_list + b"u.")


def test_cifar_python2_bytes(tmp_path):
    write_cifar(tmp_path)
    data, labels = cifar_batch(3, 42)
    (tmp_path / "data_batch_1").write_bytes(py2_batch(data, labels))
    assert pickle.loads(py2_batch(data, labels), encoding="bytes")[b"labels"] == labels  # well formed
    d = load("cifar10", tmp_path)
    assert d.x_train.shape == (19, 3, 32, 32)
    np.testing.assert_array_equal(np.round(d.x_train[:3] * 255).astype(np.uint8), data.reshape(3, 3, 32, 32))
    np.testing.assert_array_equal(d.y_train[:3], labels)


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_cifar_malicious_pickle_is_refused_not_run(tmp_path):
    write_cifar(tmp_path)
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(Payload(live)))  # the payload is real: plain unpickling runs it
    assert live.exists()

    marker = tmp_path / "marker"
    data, labels = cifar_batch(4, 0)
    evil = {b"data": data, b"labels": labels, b"filenames": Payload(marker)}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UserError, match="refusing to unpickle") as e:
        load("cifar10", tmp_path)
    assert ".exec" in str(e.value) and "data_batch_3" in str(e.value)
    assert not marker.exists()


def test_cifar_object_array_is_refused(tmp_path):
    write_cifar(tmp_path)
    d = {b"data": np.array([{"a": 1}], dtype=object), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UserError, match="refusing"):
        load("cifar10", tmp_path)


def test_cifar_truncated_batch(tmp_path):
    write_cifar(tmp_path)
    f = tmp_path / "data_batch_2"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        load("cifar10", tmp_path)
    assert str(f) in str(e.value)


def test_cifar_wrong_layout(tmp_path):
    write_cifar(tmp_path)
    d = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "data_batch_4").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UserError, match=r"shape \(N, 3072\), got uint8 array of shape \(4, 100\)"):
        load("cifar10", tmp_path)
    d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 12]}
    (tmp_path / "data_batch_4").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UserError, match="0-9"):
        load("cifar10", tmp_path)


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(UserError, match="no complete CIFAR-10 python batches") as e:
        load("cifar10", tmp_path)
    assert "data_batch_5" in str(e.value)


def make_archive(src: Path, dest: Path, extra: dict | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f"{cifar.FOLDER}/{f.name}")
        for name, payload in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return dest


def test_cifar_archive_is_extracted_by_name_only(tmp_path):
    write_cifar(tmp_path / "src")
    evil = {"../escaped": b"x", f"{cifar.FOLDER}/../../escaped2": b"x", "/tmp/deepstep-escaped3": b"x",
            f"{cifar.FOLDER}/unexpected.py": b"x"}
    archive = make_archive(tmp_path / "src", tmp_path / cifar.ARCHIVE, evil)
    d = load("cifar10", archive)
    assert d.x_train.shape == (20, 3, 32, 32)
    folder = tmp_path / "cache" / "cifar10" / cifar.FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(cifar.FILES)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cache" / "escaped2").exists()
    assert not Path("/tmp/deepstep-escaped3").exists()


def test_cifar_corrupt_archive(tmp_path):
    write_cifar(tmp_path / "src")
    archive = make_archive(tmp_path / "src", tmp_path / cifar.ARCHIVE)
    archive.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(UserError, match="cannot be extracted") as e:
        load("cifar10", archive)
    assert str(archive) in str(e.value)
    assert not (tmp_path / "cache" / "cifar10" / cifar.FOLDER).exists()


# --- npz / npy ------------------------------------------------------------------------------

def test_npz_table(tmp_path):
    x, y = np.arange(30, dtype=np.float64).reshape(10, 3), np.arange(10) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load("npz", tmp_path / "d.npz")
    assert d.kind == "table" and d.x_train.dtype == np.float32 and d.x_test is None
    np.testing.assert_array_equal(d.x_train, x)
    assert d.y_train.dtype == np.int64 and d.classes == []
    np.savez(tmp_path / "c.npz", x=x, y=y, classes=np.array(["even", "odd"]))
    assert load("npz", tmp_path / "c.npz").classes == ["even", "odd"]
    np.savez(tmp_path / "c.npz", x=x, y=y, classes=np.array(["only"]))
    with pytest.raises(UserError, match="names 1 classes, but the labels go up to 1"):
        load("npz", tmp_path / "c.npz")


def test_npz_images_split_and_scaling(tmp_path):
    rng = np.random.default_rng(0)
    xs, xt = rng.integers(0, 256, (6, 8, 7, 3), dtype=np.uint8), rng.integers(0, 256, (2, 8, 7, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", x_train=xs, y_train=np.array(["cat", "dog"] * 3),
                        x_test=xt, y_test=np.array(["dog", "ant"]))
    d = load("npz", tmp_path / "d.npz")
    assert d.kind == "image" and d.x_train.shape == (6, 3, 8, 7)  # channels-last moved to (N, C, H, W)
    np.testing.assert_allclose(d.x_train[2, 1, 4, 5], xs[2, 4, 5, 1] / 255.0, rtol=1e-6)
    assert d.classes == ["ant", "cat", "dog"]  # union of train and test labels, sorted
    assert d.y_train.tolist() == [1, 2] * 3 and d.y_test.tolist() == [2, 0]


def test_npz_series_and_regression(tmp_path):
    x, y = np.zeros((5, 2, 9), np.float32), np.linspace(0, 1, 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load("npz", tmp_path / "d.npz")
    assert d.kind == "series" and d.y_train.dtype == np.float32


def test_npy_folder(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 1, 3, 3), np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 0, 1]))
    d = load("npz", tmp_path)
    assert d.kind == "image" and d.x_train.shape == (4, 1, 3, 3)
    (tmp_path / "y.npy").unlink()
    with pytest.raises(UserError, match=r"holds the arrays x; expected x.npy and y.npy"):
        load("npz", tmp_path)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", inputs=np.zeros((3, 2)), targets=np.zeros(3))
    with pytest.raises(UserError, match="holds the arrays inputs, targets; expected arrays x and y"):
        load("npz", tmp_path / "a.npz")

    np.savez(tmp_path / "b.npz", x=np.zeros((30, 20)), y=np.zeros(30, np.int64))
    data = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "b.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable .npz archive") as e:
        load("npz", tmp_path / "b.npz")
    assert str(tmp_path / "b.npz") in str(e.value)

    np.savez(tmp_path / "c.npz", x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(UserError, match="never unpickled"):
        load("npz", tmp_path / "c.npz")

    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(4, np.int64))
    with pytest.raises(UserError, match=r"y has shape \(4,\); expected \(3,\)"):
        load("npz", tmp_path / "d.npz")

    np.savez(tmp_path / "e.npz", x=np.zeros((0, 2)), y=np.zeros(0, np.int64))
    with pytest.raises(UserError, match="no examples"):
        load("npz", tmp_path / "e.npz")

    np.savez(tmp_path / "f.npz", x=np.array([[0.0, np.nan]]), y=np.zeros(1, np.int64))
    with pytest.raises(UserError, match="NaN or infinite"):
        load("npz", tmp_path / "f.npz")

    np.save(tmp_path / "g.npy", np.zeros((3, 2)))
    with pytest.raises(UserError, match="single array"):
        load("npz", tmp_path / "g.npy")

    (tmp_path / "h.npz").write_bytes(b"")
    with pytest.raises(UserError, match="not a readable .npz"):
        load("npz", tmp_path / "h.npz")

    with pytest.raises(UserError, match="does not exist: expected a .npz file"):
        load("npz", tmp_path / "nope.npz")
    with pytest.raises(UserError, match="set data.path"):
        DATASETS.get("npz")(DataConfig(name="npz"))


def test_npy_truncated(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 4)))
    np.save(tmp_path / "y.npy", np.zeros(50, np.int64))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[:-100])
    with pytest.raises(UserError, match="not a readable .npy") as e:
        load("npz", tmp_path)
    assert "x.npy" in str(e.value)


# --- CSV ------------------------------------------------------------------------------------

def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_string_labels(tmp_path):
    f = write_csv(tmp_path / "t.csv", "a,species,b\n1,setosa,2\n\n3.5,virginica,4e1\n5,setosa,-6\n")
    d = load("csv", f, label_column="species")
    assert d.kind == "table" and d.classes == ["setosa", "virginica"]
    np.testing.assert_array_equal(d.x_train, [[1, 2], [3.5, 40], [5, -6]])
    assert d.y_train.tolist() == [0, 1, 0] and d.x_train.dtype == np.float32


def test_csv_numeric_labels(tmp_path):
    d = load("csv", write_csv(tmp_path / "i.csv", "x;label\n1;0\n2;2.0\n3;1\n"))  # ';' is detected
    assert d.y_train.dtype == np.int64 and d.y_train.tolist() == [0, 2, 1] and d.classes == []
    d = load("csv", write_csv(tmp_path / "f.csv", "x,label\n1,0.5\n2,1.25\n"))
    assert d.y_train.dtype == np.float32 and d.y_train.tolist() == [0.5, 1.25]


def test_csv_folder_with_test_file(tmp_path):
    write_csv(tmp_path / "train.csv", "x,y,label\n1,2,b\n3,4,c\n")
    write_csv(tmp_path / "test.csv", "x,y,label\n5,6,a\n")
    d = load("csv", tmp_path)
    assert d.classes == ["a", "b", "c"] and d.y_train.tolist() == [1, 2] and d.y_test.tolist() == [0]
    write_csv(tmp_path / "test.csv", "y,x,label\n5,6,a\n")
    with pytest.raises(UserError, match="feature columns"):
        load("csv", tmp_path)


def test_csv_missing_label_column(tmp_path):
    f = write_csv(tmp_path / "t.csv", "a,b,class\n1,2,x\n")
    with pytest.raises(UserError) as e:
        load("csv", f)
    msg = str(e.value)
    assert str(f) in msg and "no label column 'label'" in msg and "'a', 'b', 'class'" in msg


def test_csv_non_numeric_cell(tmp_path):
    f = write_csv(tmp_path / "t.csv", "a,b,label\n1,2,x\n3,4,y\n5,oops,x\n")
    with pytest.raises(UserError) as e:
        load("csv", f)
    assert f"'{f}' line 4, column 'b' holds 'oops'" in str(e.value)


@pytest.mark.parametrize("text,expected", [
    ("", "is empty"),
    ("a,label\n", "no data rows"),
    ("1,2\n3,4\n", "no header line"),
    ("a,b,label\n1,2,x\n3,x\n", "line 3: 2 fields, but the header names 3 columns"),
    ("a,b,label\n1,,x\n", "line 2, column 'b' is empty"),
    ("a,b,label\n1,inf,x\n", "line 2, column 'b' holds 'inf'"),
    ("a,label\n1,\n", "line 2: the label column 'label' is empty"),
    ("label\nx\n", "no feature columns"),
])
def test_csv_bad_files(tmp_path, text, expected):
    f = write_csv(tmp_path / "t.csv", text)
    with pytest.raises(UserError, match=expected.replace("(", r"\(")) as e:
        load("csv", f)
    assert str(f) in str(e.value)


def test_csv_binary_garbage(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load("csv", f)


# --- image folders --------------------------------------------------------------------------

def png(path: Path, size=(6, 4), color=(255, 0, 0), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


def test_image_folder(tmp_path):
    png(tmp_path / "cat" / "a.png", (6, 4), (255, 0, 0))
    png(tmp_path / "cat" / "b.png", (12, 8), (0, 255, 0))   # resized to the first image's size
    png(tmp_path / "dog" / "c.png", (6, 4), (0, 0, 255), mode="L")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    d = load("images", tmp_path)
    assert d.kind == "image" and d.x_train.shape == (3, 3, 4, 6) and d.classes == ["cat", "dog"]
    assert d.y_train.tolist() == [0, 0, 1] and d.x_test is None
    np.testing.assert_allclose(d.x_train[0, :, 0, 0], [1, 0, 0])
    np.testing.assert_allclose(d.x_train[1, :, 2, 3], [0, 1, 0])
    g = load("images", tmp_path, grayscale=True, image_size=5)
    assert g.x_train.shape == (3, 1, 5, 5) and 0 < g.x_train[0].mean() < 1


def test_image_folder_train_test(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                png(tmp_path / split / cls / f"{i}.png", (4, 4), (i * 40, 0, 0))
    d = load("images", tmp_path)
    assert d.x_train.shape == (6, 3, 4, 4) and d.x_test.shape == (2, 3, 4, 4) and d.y_test.tolist() == [0, 1]
    assert len(load("images", tmp_path, limit=4).x_train) == 4
    png(tmp_path / "test" / "zebra" / "0.png")
    with pytest.raises(UserError, match="a class the training images lack"):
        load("images", tmp_path)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        load("images", tmp_path / "empty")
    png(tmp_path / "f" / "a" / "0.png")
    (tmp_path / "f" / "b").mkdir()
    with pytest.raises(UserError, match="holds no image files") as e:
        load("images", tmp_path / "f")
    assert str(tmp_path / "f" / "b") in str(e.value)
    (tmp_path / "f" / "b" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="not a readable image") as e:
        load("images", tmp_path / "f")
    assert "bad.png" in str(e.value)
    good = png(tmp_path / "g" / "a" / "0.png", (64, 64))
    data = good.read_bytes()
    png(tmp_path / "g" / "b" / "1.png", (64, 64))
    (tmp_path / "g" / "b" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable image") as e:
        load("images", tmp_path / "g")
    assert "1.png" in str(e.value)
    with pytest.raises(UserError, match="is a file"):
        load("images", good)


def test_train_on_image_folder_in_process(tmp_path):
    from deepstep.config import load_config
    from deepstep.run import train

    rng = np.random.default_rng(0)
    for cls, channel in (("red", 0), ("green", 1)):
        for i in range(10):
            a = rng.integers(0, 60, (6, 6, 3), dtype=np.uint8)
            a[..., channel] = 220
            (tmp_path / "img" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(tmp_path / "img" / cls / f"{i}.png")
    cfg = load_config("digits-mlp", ["data.name=images", f"data.path={tmp_path / 'img'}", "train.epochs=1",
                                     "data.test_split=0.3", "data.val_split=0.0", "model.hidden=[8]"])
    r = train(cfg, run_dir=tmp_path / "run", verbose=0)
    assert 0.0 <= r["test/acc"] <= 1.0 and (tmp_path / "run" / "summary.json").exists()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["in_shape"] == [3, 6, 6] and meta["classes"] == ["green", "red"] and meta["kind"] == "image"


# --- predict inputs -------------------------------------------------------------------------

def test_read_inputs_image_npy_csv(tmp_path):
    img = png(tmp_path / "x.png", (10, 10), (255, 255, 255))
    x, names = read_inputs([str(img)], (1, 4, 4), "image")
    assert x.shape == (1, 1, 4, 4) and np.allclose(x, 1.0) and names == [str(img)]

    np.save(tmp_path / "a.npy", np.arange(32, dtype=np.float64).reshape(2, 16))
    x, names = read_inputs([str(tmp_path / "a.npy")], (1, 4, 4), "image")
    assert x.shape == (2, 1, 4, 4) and x.dtype == np.float32 and names[1].endswith("a.npy[1]")

    f = write_csv(tmp_path / "rows.csv", "a,target,b\n1,cat,2\n3,dog,4\n")
    x, names = read_inputs([str(f)], (2,), "table", label_column="target")
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    assert names == [f"{f}:row1", f"{f}:row2"]
    g = write_csv(tmp_path / "plain.csv", "1,2\n3,4\n")  # no header: every row is data
    assert read_inputs([str(g)], (2,), "table")[0].shape == (2, 2)


def test_read_inputs_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_inputs([str(tmp_path / "missing.png")], (1, 4, 4), "image")
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(UserError, match="unsupported input type '.txt'"):
        read_inputs([str(tmp_path / "x.txt")], (2,), "table")
    img = png(tmp_path / "x.png")
    with pytest.raises(UserError, match="is an image, but this run's model reads table inputs"):
        read_inputs([str(img)], (4,), "table")
    np.save(tmp_path / "a.npy", np.zeros(5))
    with pytest.raises(UserError, match="not a whole number of examples"):
        read_inputs([str(tmp_path / "a.npy")], (2,), "table")
    (tmp_path / "b.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="not a valid .npy"):
        read_inputs([str(tmp_path / "b.npy")], (2,), "table")
    f = write_csv(tmp_path / "r.csv", "a,b,label\n1,2,x\n")
    with pytest.raises(UserError, match="expected 3 numbers per row"):
        read_inputs([str(f)], (3,), "table")
    f = write_csv(tmp_path / "s.csv", "a,b\n1,2\n3,two\n")
    with pytest.raises(UserError, match="line 3, column 'b' holds 'two'"):
        read_inputs([str(f)], (2,), "table")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="not a readable image"):
        read_inputs([str(tmp_path / "bad.png")], (1, 4, 4), "image")


# --- end to end through the CLI -------------------------------------------------------------

def test_cli_train_and_predict_on_user_csv(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    names = ["iris", "lily", "rose"]
    lines = ["width,height,species,depth"]
    for i in range(60):
        c = i % 3
        w, h, dep = rng.normal(c * 3.0, 0.3, 3)
        lines.append(f"{w:.3f},{h:.3f},{names[c]},{dep:.3f}")
    f = write_csv(tmp_path / "flowers.csv", "\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = run_cli("train", "digits-mlp", "--set", "data.name=csv", "--set", f"data.path={f}",
                "--set", "data.label_column=species", "--set", "train.epochs=1", "--run-dir", run, "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert "test/acc" in summary and summary["epochs"] == 1

    r = run_cli("predict", run, f, "--json")  # the CSV still holds the label column: it is dropped
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 60 and {o["top"][0]["class"] for o in out} <= set(names)


def test_cli_missing_data_file(tmp_path, run_cli):
    missing = tmp_path / "nope.csv"
    r = run_cli("train", "digits-mlp", "--set", "data.name=csv", "--set", f"data.path={missing}",
                "--set", "train.epochs=1", "--run-dir", tmp_path / "run")
    assert r.returncode == 2
    assert str(missing) in r.stderr and "Traceback" not in r.stderr


def test_image_size_resizes_every_image_data_set():
    """data.image_size resizes built-in images too (both splits, scale applied), e.g. Fashion-MNIST
    down to the digits' 8x8; a constant image stays constant."""
    from deepstep.data.arrays import Arrays, resize_images

    x = np.zeros((3, 1, 28, 28), np.uint8)
    x[0] = 255
    x[1, :, :, :14] = 255  # left half white
    a = Arrays(x, np.arange(3), x_test=x[:2].copy(), y_test=np.arange(2), kind="image", scale=1 / 255)
    r = resize_images(a, 8)
    assert r.x_train.shape == (3, 1, 8, 8) and r.x_test.shape == (2, 1, 8, 8) and r.scale == 1.0
    assert r.x_train.dtype == np.float32 and np.allclose(r.x_train[0], 1.0) and np.allclose(r.x_train[2], 0.0)
    assert np.allclose(r.x_train[1, 0, :, :3], 1.0) and np.allclose(r.x_train[1, 0, :, 5:], 0.0)
    assert resize_images(r, 8) is r  # already that size: untouched
    with pytest.raises(UserError, match="data.image_size = -1"):
        resize_images(a, -1)

    from deepstep.config import load_config
    from deepstep.engine.runtime import Runtime
    from deepstep.tasks.supervised import Supervised

    cfg = load_config("digits-mlp", ["data.image_size=4", "train.threads=1"])
    task = Supervised(cfg, Runtime.from_config(cfg.train))
    assert tuple(task.meta["in_shape"]) == (1, 4, 4)


def test_alternating_flips_mirror_every_image_once_in_two_epochs(monkeypatch, tmp_path):
    import torch

    from deepstep.config import load_config
    from deepstep.data import arrays
    from deepstep.run import train
    from deepstep.tasks import supervised

    steps = []  # per training step: [positions in the training part, flip mask]
    real_batches, real_augment = arrays.TensorData.batches, supervised.augment_images

    def batches(self, *args, **kw):
        for b in real_batches(self, *args, **kw):
            if kw.get("with_index"):
                steps.append([b[2].clone()])
            yield b

    def augment(x, kind, max_shift=2, flip=None):
        out = real_augment(x, kind, max_shift, flip=flip)
        assert torch.equal(out[flip], x[flip].flip(-1)) and torch.equal(out[~flip], x[~flip])
        steps[-1].append(flip.clone())
        return out

    monkeypatch.setattr(arrays.TensorData, "batches", batches)
    monkeypatch.setattr(supervised, "augment_images", augment)
    run = train(load_config("digits-cnn", ["train.epochs=3", "data.augment=altflip", "data.limit=400",
                                           "train.threads=1"]), tmp_path / "run", verbose=0)
    n = run.meta["sizes"]["train"]
    per_epoch = len(steps) // 3
    flips = []
    for e in range(3):
        pos = torch.cat([s[0] for s in steps[e * per_epoch:(e + 1) * per_epoch]])
        mask = torch.cat([s[1] for s in steps[e * per_epoch:(e + 1) * per_epoch]])
        assert sorted(pos.tolist()) == list(range(len(pos)))  # each example once per epoch
        assert len(pos) == n
        f = torch.empty(len(pos), dtype=torch.bool)
        f[pos] = mask
        flips.append(f)
    assert 0.4 < flips[0].float().mean() < 0.6  # a random half
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0])  # the other half, then the first


def test_unknown_augmentation_lists_alternating_flips():
    with pytest.raises(UserError, match="'altflip'"):
        DataConfig(augment="alt-flip")
