"""Downloads for real, against an HTTP server on 127.0.0.1 serving files from tmp_path: MD5 accepted
and rejected (nothing left in the cache), mirror fallback, and the offline error that says where
to put which files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from deepstep.config import DataConfig
from deepstep.data import cifar, idx
from deepstep.data.download import fetch
from deepstep.errors import UserError
from deepstep.registry import DATASETS
from test_data import make_archive, write_cifar, write_idx_set


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www on a free local port; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never route the local server through a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPSTEP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens here any more: connection refused


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_mnist(www: Path, monkeypatch, base: str, mirrors=None, md5s=None) -> dict:
    arrays = write_idx_set(www)
    md5s = md5s or [md5_of(www / f) for f in idx.FILES]
    monkeypatch.setitem(idx.SOURCES, "mnist", {**idx.SOURCES["mnist"], "mirrors": mirrors or [base], "md5": md5s})
    return arrays


def mnist(**kw):
    return DATASETS.get("mnist")(DataConfig(name="mnist", **kw))


def test_idx_download_with_correct_md5(server, cache, monkeypatch):
    base, www = server
    arrays = serve_mnist(www, monkeypatch, base)
    d = mnist()
    np.testing.assert_array_equal(d.y_train, arrays["train-labels-idx1-ubyte.gz"])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(idx.FILES)  # no .part left
    for f in idx.FILES:
        (www / f).unlink()  # the second load is served from the cache alone
    assert len(mnist().x_train) == 12


def test_idx_download_rejects_wrong_md5(server, cache, monkeypatch):
    base, www = server
    serve_mnist(www, monkeypatch, base, md5s=["0" * 32] * 4)
    with pytest.raises(UserError) as e:
        mnist()
    msg = str(e.value)
    assert "checksum" in msg and "0" * 32 in msg and str(cache / "mnist") in msg
    assert list((cache / "mnist").iterdir()) == []  # neither the file nor a partial download stays


def test_idx_mirror_fallback(server, cache, monkeypatch):
    base, www = server
    serve_mnist(www, monkeypatch, base, mirrors=[closed_port_url(), base + "missing/", base])
    assert mnist().x_test.shape == (4, 1, 5, 5)


def test_idx_offline_error_says_where_to_put_files(cache, monkeypatch, tmp_path):
    monkeypatch.setitem(idx.SOURCES, "mnist", {**idx.SOURCES["mnist"], "mirrors": [closed_port_url()]})
    with pytest.raises(UserError) as e:
        mnist()
    msg = str(e.value)
    assert "could not be fetched" in msg and "ConnectionError" in msg
    assert f"into '{cache / 'mnist'}'" in msg and all(f in msg for f in idx.FILES)
    assert "data.path" in msg


def test_idx_downloads_off(cache):
    with pytest.raises(UserError, match=r"downloads are off \(data.download = false\)"):
        mnist(download=False)


def test_fetch_http_error_is_named(server, cache):
    base, _ = server
    with pytest.raises(UserError, match="missing.bin: HTTPError"):
        fetch("missing.bin", [base], cache, None)
    assert list(cache.iterdir()) == []


def serve_cifar(www: Path, tmp_path: Path, monkeypatch, base: str, md5: str | None = None) -> Path:
    write_cifar(tmp_path / "batches")
    archive = make_archive(tmp_path / "batches", www / cifar.ARCHIVE)
    monkeypatch.setitem(cifar.SOURCES, "cifar10", {"mirrors": [base], "md5": md5 or md5_of(archive)})
    return archive


def cifar10(**kw):
    return DATASETS.get("cifar10")(DataConfig(name="cifar10", **kw))


def test_cifar_download_and_extract(server, cache, monkeypatch, tmp_path):
    base, www = server
    serve_cifar(www, tmp_path, monkeypatch, base)
    d = cifar10()
    assert d.x_train.shape == (20, 3, 32, 32) and d.classes[0] == "AIRPLANE"
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == [cifar.FOLDER]  # archive removed
    (www / cifar.ARCHIVE).unlink()
    assert cifar10().x_test.shape == (4, 3, 32, 32)  # from the extracted cache


def test_cifar_download_rejects_wrong_md5(server, cache, monkeypatch, tmp_path):
    base, www = server
    serve_cifar(www, tmp_path, monkeypatch, base, md5="f" * 32)
    with pytest.raises(UserError, match="checksum") as e:
        cifar10()
    assert cifar.ARCHIVE in str(e.value)
    assert list((cache / "cifar10").iterdir()) == []


def test_cifar_offline_error(cache, monkeypatch):
    monkeypatch.setitem(cifar.SOURCES, "cifar10", {"mirrors": [closed_port_url()], "md5": "0" * 32})
    with pytest.raises(UserError) as e:
        cifar10()
    msg = str(e.value)
    assert "could not be fetched" in msg and f"Put {cifar.ARCHIVE}" in msg and str(cache / "cifar10") in msg
