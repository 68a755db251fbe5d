"""Atomic file writes: readers see the old file or the new one, never half of one.

Every file the project writes (receipts, parameter files, the data cache, reports)
goes through here: content is written to a temporary file beside its destination,
flushed and fsynced, then renamed over it; on any failure the temporary file is
removed and the destination is untouched.

A process killed outright (``kill -9``, power loss) cannot remove its temporary
files, so their names carry the owner's process id
(``.<name>.yat-core-<pid>-<random>.tmp``) and every write first removes the stale
ones in its folder: those whose owner is gone, or that are older than
:data:`STALE_AGE_S`. Reading goes through :func:`open_regular`, which names a FIFO,
a folder, a device or a symlink loop for what it is instead of blocking on it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from .errors import DataError

__all__ = [
    "STALE_AGE_S",
    "atomic_write",
    "atomic_write_files",
    "atomic_write_text",
    "cache_root",
    "check_writable",
    "open_regular",
    "parse_json",
    "pid_alive",
    "remove_stale_temps",
]

Writer = Callable[[IO[bytes]], object]

#: A temporary file or folder of this project older than this many seconds is stale even
#: if a process with its owner's id exists (that id may have been reused).
STALE_AGE_S = 3600.0
_TEMP_TAG = "yat-core"
# .<dest name>.yat-core-<pid>-<12 hex>.tmp
_TEMP_RE = re.compile(rf"^\..+\.{_TEMP_TAG}-(\d{{1,10}})-[0-9a-f]{{12}}\.tmp$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True when it cannot be told).

    Examples
    --------
    >>> pid_alive(os.getpid())
    True
    """
    if pid == os.getpid():
        return True
    if pid <= 0 or os.name != "posix":
        # pid 0 and negative ids name process groups; on Windows os.kill would end the process.
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists under another user, or cannot be checked: keep its files
    return True


def _is_stale(pid: int, mtime: float, max_age_s: float) -> bool:
    return not pid_alive(pid) or time.time() - mtime > max_age_s


def remove_stale_temps(
    folder: str | os.PathLike[str], *, pattern: re.Pattern[str] | None = None, max_age_s: float = STALE_AGE_S
) -> list[Path]:
    """Remove this project's stale temporary files (and folders) in ``folder``; return what was removed.

    An entry is ours when its name matches ``pattern`` (default: the temporary files of
    :func:`atomic_write`), whose first group is the owner's process id. It is stale when
    that process is gone or the entry is older than ``max_age_s``. Entries of other users,
    symbolic links and unreadable folders are left alone; nothing here raises.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / ".x.yat-core-999999999-0123456789ab.tmp").write_bytes(b"left by a killed run")
    >>> [p.name for p in remove_stale_temps(d)]
    ['.x.yat-core-999999999-0123456789ab.tmp']
    """
    regex = pattern or _TEMP_RE
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        match = regex.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (uid is not None and info.st_uid != uid) or not _is_stale(int(match.group(1)), info.st_mtime, max_age_s):
            continue
        path = Path(entry.path)
        try:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(path)
            elif stat.S_ISREG(info.st_mode):
                path.unlink()
            else:
                continue
        except OSError:
            continue
        removed.append(path)
    return removed


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def cache_root() -> Path:
    """The folder of yat-core's caches: ``$XDG_CACHE_HOME/yat-core``, else ``~/.cache/yat-core``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says.

    Examples
    --------
    >>> cache_root().name
    'yat-core'
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "yat-core"


def check_writable(name: str, path: str | os.PathLike[str], *, folder: bool) -> Path:
    """Refuse an output path that cannot be written, before any work: one ``ValueError`` naming ``name``.

    ``path`` is a file (``folder`` False; written atomically beside itself, so its folder
    must be writable) or a folder. Missing parents are fine if the nearest existing one
    is a writable folder; nothing is created here.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> check_writable("--report", d, folder=False)
    Traceback (most recent call last):
    ...
    ValueError: --report ...: is a folder; give a file name
    >>> check_writable("out", Path(d) / "new" / "folder", folder=True).name
    'folder'
    """
    target = Path(path)
    try:
        if folder and target.exists() and not target.is_dir():
            raise ValueError(f"{name} {path}: is a file; give a folder")
        if not folder and target.is_dir():
            raise ValueError(f"{name} {path}: is a folder; give a file name")
        existing = target if folder and target.is_dir() else target.absolute().parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"{name} {path}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{name} {path}: the folder {existing} is not writable")
    except OSError as exc:  # a name too long, a symlink loop, no permission to look
        raise ValueError(f"{name} {path}: cannot be used ({exc.strerror or exc})") from None
    return target


def open_regular(
    path: str | os.PathLike[str], name: str | None = None, *, fault: Callable[[str], Exception] | None = None
) -> tuple[io.BufferedReader, os.stat_result]:
    """Open a regular file for reading, never blocking on what is not one.

    A FIFO, folder, device, socket, dangling link or symlink loop under ``path``
    is refused by what it is (``"is a FIFO, not a file"``) before it is opened (a FIFO
    without a writer would block, a device like ``/dev/zero`` never ends); the file is
    opened non-blocking and checked again after opening, so a FIFO swapped in
    meanwhile is refused too.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    name : str, optional
        Shown in error messages; default ``path``.
    fault : callable, optional
        Builds the exception to raise from what is wrong (``"file not found"``, ...);
        default a :class:`~yat_core.errors.DataError` ``"<name>: <what>"``.

    Returns
    -------
    (file object, os.stat_result)
        The open binary file (the caller closes it) and its status.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> open_regular(d)
    Traceback (most recent call last):
    ...
    yat_core.errors.DataError: ...: is a directory, not a file
    >>> open_regular(d, fault=ValueError)
    Traceback (most recent call last):
    ...
    ValueError: is a directory, not a file
    """
    label = os.fspath(path) if name is None else name
    fail = fault if fault is not None else (lambda what: DataError(f"{label}: {what}"))
    if "\0" in os.fspath(path):
        raise fail("cannot be read (its name holds a NUL character)")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise fail(_os_problem(exc, path)) from None
    kind = _kind(info.st_mode)
    if kind is not None:
        raise fail(f"is {kind}, not a file")
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise fail(_os_problem(exc, path)) from None
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is not None:  # replaced between stat and open
            raise fail(f"is {kind}, not a file")
        return io.BufferedReader(io.FileIO(fd, "rb")), info
    except BaseException:
        os.close(fd)
        raise


def _os_problem(exc: OSError, path: str | os.PathLike[str]) -> str:
    if isinstance(exc, FileNotFoundError):
        return "is a dangling symbolic link, not a file" if os.path.islink(path) else "file not found"
    if exc.errno == errno.ELOOP:
        return "is a symlink loop, not a file"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a part of its path is not a directory)"
    if isinstance(exc, PermissionError):
        return "cannot be read (permission denied)"
    return f"cannot be read ({exc.strerror or exc})"


def _write_temp(dest: Path, write: Writer) -> Path:
    # Not tempfile.mkstemp: its files are mode 0600, and a cache or a receipt should get
    # the ordinary permissions that mode 0666 minus the umask gives.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        # The owner's pid in the name lets a later run tell a killed writer's leftovers.
        tmp = dest.with_name(f".{dest.name}.{_TEMP_TAG}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
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
    temporary files are removed. Parent folders are created, and stale temporary files
    of killed writers in them are removed first (:func:`remove_stale_temps`).

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
        cleaned: set[Path] = set()
        for dest, write in files.items():
            dest = Path(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.parent not in cleaned:
                remove_stale_temps(dest.parent)
                cleaned.add(dest.parent)
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key appears twice in one object: {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _depth_over(value: Any, limit: int) -> bool:
    """Whether JSON data nests objects and lists deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(
    raw: bytes | str, subject: str, *, max_containers: int, max_depth: int | None = None, unique_keys: bool = False
) -> Any:
    """Parse untrusted JSON with bounded work; every fault is a ``ValueError`` that starts with ``subject``.

    The objects and lists are counted before parsing (so a flood of them costs one pass
    over the bytes), nesting that would exhaust the parser's recursion is caught, and
    ``max_depth`` bounds the nesting of what parsed. ``unique_keys`` refuses an object that
    names a key twice (the JSON module would keep the last silently).

    Examples
    --------
    >>> parse_json(b'{"a": [1, 2]}', "the file", max_containers=10)
    {'a': [1, 2]}
    >>> parse_json(b'{"a": 1, "a": 2}', "the header", max_containers=10, unique_keys=True)
    Traceback (most recent call last):
    ...
    ValueError: the header is not valid JSON (a key appears twice in one object: 'a')
    >>> parse_json(b"[[[1]]]", "the file", max_containers=10, max_depth=2)
    Traceback (most recent call last):
    ...
    ValueError: the file is JSON nested more than 2 levels deep
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"{") + data.count(b"[") > max_containers:
        raise ValueError(f"{subject} holds more than {max_containers:,} JSON objects and lists")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{subject} is not UTF-8 text") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys if unique_keys else None)
    except RecursionError:
        raise ValueError(f"{subject} is JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{subject} is not valid JSON (truncated?): {exc}") from None
    except ValueError as exc:  # a repeated key, or an integer of more digits than Python converts
        raise ValueError(f"{subject} is not valid JSON ({exc})") from None
    if max_depth is not None and _depth_over(value, max_depth):
        raise ValueError(f"{subject} is JSON nested more than {max_depth} levels deep")
    return value
