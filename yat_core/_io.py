"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file the project writes (receipts, parameter files, the data cache, reports)
goes through here: content is written to a temporary file beside its destination,
flushed and fsynced, then renamed over it; on any failure the temporary file is
removed and the destination is untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_files", "atomic_write_text"]

Writer = Callable[[IO[bytes]], object]


def _write_temp(dest: Path, write: Writer) -> Path:
    # Not tempfile.mkstemp: its files are mode 0600, and a cache or a receipt should get
    # the ordinary permissions that mode 0666 minus the umask gives.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - a 48-bit name collision
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    # Makes the renames durable on POSIX; not possible (nor needed) on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_files(files: Mapping[Path, Writer]) -> list[Path]:
    """Write several files so that none is ever seen partially written.

    Every ``write(fh)`` fills an fsynced temporary file beside its destination first;
    only when all are written are they renamed into place. On any failure the
    temporary files are removed. Parent folders are created.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = atomic_write_files({d / "a": lambda fh: fh.write(b"1"), d / "b": lambda fh: fh.write(b"2")})
    >>> sorted(p.name for p in d.iterdir())
    ['a', 'b']
    """
    temps: dict[Path, Path] = {}
    try:
        for dest, write in files.items():
            dest = Path(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            temps[dest] = _write_temp(dest, write)
        for dest, tmp in temps.items():
            os.replace(tmp, dest)
        for folder in {dest.parent for dest in temps}:
            _fsync_dir(folder)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # already renamed on success
    return list(temps)


def atomic_write(path: str | os.PathLike[str], write: Writer) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> atomic_write(p, lambda fh: fh.write(b"ok")).read_bytes()
    b'ok'
    """
    return atomic_write_files({Path(path): write})[0]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "r.md", "# ok\\n").read_text()
    '# ok\\n'
    """
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))
