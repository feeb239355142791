"""Cached, checksummed downloads. Files land in `$DEEPSTEP_CACHE` (default ~/.cache/deepstep);
a file is only moved into place after its MD5 matches. Offline or unreachable mirrors end in a
UserError that says where to put which files by hand."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..quick import enabled as quick_mode


def cache_dir() -> Path:
    """$DEEPSTEP_CACHE (default ~/.cache/deepstep); in quick mode its quick/ folder, so that the
    shortened runs cached there (pretrained backbones, feature classifiers) never stand in for
    full ones."""
    root = Path(os.environ.get("DEEPSTEP_CACHE", Path.home() / ".cache" / "deepstep"))
    return root / "quick" if quick_mode() else root


def missing_message(name: str, where: Path, files: str, why: str, hint: str = "") -> str:
    """The 'not here and not fetched' error: why, and where to put which files by hand."""
    return (f"{name} is not on this machine and could not be fetched: {why} "
            f"Put {files} into '{where}' or pass their folder with --set data.path=DIR.{hint}")


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, mirrors: list[str], dest: Path, checksum: str | None, timeout: float = 30.0) -> Path:
    """Download `name` from the first mirror that answers into `dest`, verifying its MD5.

    Raises UserError naming every mirror tried and why it failed."""
    import requests

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, requests.get(url, stream=True, timeout=timeout) as r:
                r.raise_for_status()
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
            got = md5(Path(tmp))
            if checksum and got != checksum:
                errors.append(f"{url}: checksum {got} != expected {checksum}")
                continue
            os.replace(tmp, target)
            return target
        except requests.RequestException as e:
            errors.append(f"{url}: {type(e).__name__}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise UserError(f"Could not download '{name}' ({'; '.join(errors)}).")


def extract_archive(archive: Path, where: Path, folder: str, select: Callable[[str], str | None],
                    check: Callable[[Path, int], str | None], redownload: str) -> Path:
    """Extract a .tar.gz into `where/folder`, atomically and by name only.

    `select` maps a member name to the relative path it is written to (None: skip it), so no
    member can write outside the target; `check(tmp, n)` returns what is missing ('' or None
    when complete). Errors name the archive and say to download `redownload` again."""
    where.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where, prefix=".extract-"))
    try:
        n = 0
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                rel = select(m.name) if m.isfile() else None
                if rel is None:
                    continue
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(tmp / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
        problem = check(tmp, n)
        if problem:
            raise UserError(f"'{archive}' is not {problem}.")
        target = where / folder
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier copy
        os.replace(tmp, target)
        return target
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"'{archive}' cannot be extracted ({type(e).__name__}: {e}). "
                        f"Delete it and download {redownload} again.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
