"""Atomic writes and checksums: every artefact the project writes goes through here.

A reader (the app, a resumed run, CI) must never see a half-written file, and every shipped file is
checked against a SHA-256 recorded when it was written.

Writing: ``atomic_write`` (a callback given an open binary file), ``atomic_write_path`` (a callback given a
temporary path, for writers that want a file name: safetensors, parquet), ``atomic_write_bytes`` /
``atomic_write_text``, and ``staged_dir`` for a folder that appears whole or not at all. ``file_digests``
records the SHA-256 of the files written.

Reading: ``verify_file`` / ``verify_files`` check files against the recorded SHA-256 and raise
``ChecksumError`` (or a subclass the caller names, e.g. the store's or the checkpoint's) naming the file.

``mlcm_core/dft/worker.py`` keeps its own copy of the atomic npz write: it runs under Debian's python3 without
this package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["ChecksumError", "atomic_write", "atomic_write_bytes", "atomic_write_path", "atomic_write_text",
           "cached_json", "file_digests", "sha256_file", "staged_dir", "verify_file", "verify_files"]


class ChecksumError(RuntimeError, ValueError):
    """A file listed with a SHA-256 is missing, or its content no longer has that SHA-256.

    Also a ValueError: the readers of single artefacts (embedding table, projection) raised ValueError for a bad
    file before this class existed, and their callers catch that."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(root: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: SHA-256 of root/name}``: what a manifest records for the files just written."""
    return {name: sha256_file(Path(root) / name) for name in names}


def verify_file(path: str | Path, expected: str | None, *, listed_in: str | None = None,
                error: type[ChecksumError] = ChecksumError) -> Path:
    """``path``, after checking that it is a file and, unless ``expected`` is None, that its SHA-256 is ``expected``.

    Raises ``error`` (ChecksumError or a subclass) naming the file; ``listed_in`` says where the file was
    listed (e.g. "the manifest"), for the message.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"missing file {path}" + (f" listed in {listed_in}" if listed_in else ""))
    if expected is not None and sha256_file(path) != expected:
        raise error(f"checksum mismatch for {path}: the file is corrupt or was modified")
    return path


def verify_files(root: str | Path, files: Mapping[str, str], *, listed_in: str | None = "the manifest",
                 error: type[ChecksumError] = ChecksumError) -> None:
    """``verify_file`` on every ``root/name`` of a manifest's ``{name: SHA-256}``; the first bad file raises."""
    for name, digest in files.items():
        verify_file(Path(root) / name, digest, listed_in=listed_in, error=error)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_path(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` for a temporary path beside ``path`` (same suffix), fsync, then rename it into place.

    For writers that take a file name rather than a file object (safetensors ``save_file``, ``to_parquet``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final``; it replaces ``final`` only if the block
    completes (an older ``final`` stays in place until then), and is removed if the block raises.

    Every file in it is fsynced before the rename, so the folder never appears with half-written files.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}-tmp-{os.getpid()}"
    old = final.parent / f".{final.name}-old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    moved_aside = False
    try:
        yield tmp
        for folder, _dirs, names in os.walk(tmp):
            for name in names:
                _fsync(os.path.join(folder, name))
        shutil.rmtree(old, ignore_errors=True)  # left by a killed process that had this pid
        if final.exists():
            os.replace(final, old)
            moved_aside = True
        os.replace(tmp, final)
    except BaseException:
        if moved_aside and not final.exists():
            os.replace(old, final)  # the swap failed half way: put the old folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def cached_json(path: str | Path, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, or the result stored at ``path`` under the same key, so a resumed job skips finished work.

    ``key`` is compared after a JSON round trip (tuples become lists); ``compute`` must return JSON-ready values.
    A stored result under another key is recomputed and replaced, atomically.
    """
    path = Path(path)
    key = json.loads(json.dumps(key, default=str))
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "result": result}))
    return result
