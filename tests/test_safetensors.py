"""yat_core.weights: safetensors files that carry their model, ``.npz`` beside them, every framework.

A model of each kind (mlp, cnn, vit) built in each framework is saved as safetensors
and rebuilt from the file alone in every other framework: same parameters, logits
within float32 rounding of the source's and of the core's (float64), identical argmax.
Keras fixes its backend when first imported, so its half runs in a fresh process
(``KERAS_BACKEND=jax``): this file is also a script, ``python tests/test_safetensors.py
DIR``, that exports Keras models into DIR and loads every file found there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, also when run as a script

from conftest import write_tiny_mnist  # noqa: E402
from test_interchange import core_logits, random_params  # noqa: E402

from yat_core import weights  # noqa: E402
from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.nn import get_framework  # noqa: E402
from yat_core.nn.interchange import save_npz  # noqa: E402
from yat_core.spec import LayerSpec, ModelSpec, cnn_spec, seed_spec, vit_softmax_spec, vit_spec  # noqa: E402
from yat_core.weights import (  # noqa: E402
    FORMAT_VERSION,
    WeightFileError,
    build_from_file,
    export_weights,
    import_weights,
    load_safetensors,
    load_weights,
    save_safetensors,
    save_weights,
    spec_from_json,
    spec_to_json,
)

#: The models moved between frameworks: one of each kind.
SPECS = {"mlp": seed_spec, "cnn": cnn_spec, "vit": vit_spec}
IN_PROCESS = ("torch", "nnx", "linen", "mlx", "tf")
FRAMEWORKS = (*IN_PROCESS, "keras")
#: Samples per model: enough for the argmax to mean something, few enough to stay fast.
N = 16


def sample(spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """Float32 pixels in [0, 1], flat ``(n, prod(input_shape))`` (every framework reshapes them)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (N, spec.in_features)).astype(np.float32) / np.float32(255)).astype(np.float32)


def source_params(model: str, framework: str) -> dict[str, np.ndarray]:
    """Parameters unlike any initialisation and different for every source, so a file mix-up shows."""
    return random_params(SPECS[model](), 1 + FRAMEWORKS.index(framework))


def file_of(folder: Path, model: str, framework: str) -> Path:
    return folder / f"{model}-{framework}.safetensors"


def export_all(framework: str, folder: Path) -> dict[str, np.ndarray]:
    """Build each model in ``framework``, set its parameters, save it; return its logits by model."""
    module = get_framework(framework)
    logits = {}
    for model, make in SPECS.items():
        spec = make()
        native = module.import_params(module.build_model(spec, 0), source_params(model, framework))
        export_weights(framework, native, file_of(folder, model, framework))
        logits[model] = module.predict(native, sample(spec))
    return logits


def load_all(framework: str, folder: Path) -> dict[str, np.ndarray]:
    """Every file in ``folder`` loaded into ``framework``: logits by ``"model/source"``.

    The first file of a model rebuilds it from the file alone (:func:`build_from_file`); the
    others are imported into that model (:func:`import_weights`), so both paths are used.
    """
    module = get_framework(framework)
    out = {}
    for model, make in SPECS.items():
        spec, native = make(), None
        for source in FRAMEWORKS:
            path = file_of(folder, model, source)
            if native is None:
                native = build_from_file(framework, path)
                assert type(native).__module__ == module.__name__ and native.spec == spec
            else:  # Linen models are immutable: every import returns the model to use
                native = import_weights(framework, native, path)
            out[f"{model}/{source}"] = module.predict(native, sample(spec))
    return out


def _keras_script(folder: Path) -> None:
    np.savez(folder / "keras-source.npz", **export_all("keras", folder))
    np.savez(folder / "keras-loaded.npz", **load_all("keras", folder))


# ================================================================ every framework to every other


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Export from every framework, load into every framework; the logits of each step."""
    pytest.importorskip("safetensors")
    for name in FRAMEWORKS:
        pytest.importorskip(
            {"nnx": "flax.nnx", "linen": "flax.linen", "mlx": "mlx.nn", "tf": "tensorflow"}.get(name, name)
        )
    folder = tmp_path_factory.mktemp("moved")
    sources = {name: export_all(name, folder) for name in IN_PROCESS}
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, __file__, str(folder)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"the Keras process failed:\n{result.stderr[-4000:]}"
    with np.load(folder / "keras-source.npz") as data:
        sources["keras"] = {k: data[k] for k in data.files}
    loaded = {name: load_all(name, folder) for name in IN_PROCESS}
    with np.load(folder / "keras-loaded.npz") as data:
        loaded["keras"] = {k: data[k] for k in data.files}
    return {"folder": folder, "sources": sources, "loaded": loaded}


@pytest.mark.parametrize("dst", FRAMEWORKS)
@pytest.mark.parametrize("src", FRAMEWORKS)
@pytest.mark.parametrize("model", list(SPECS))
def test_a_model_saved_in_one_framework_predicts_the_same_in_every_other(moved, model, src, dst):
    spec = SPECS[model]()
    x = sample(spec)
    theirs = moved["sources"][src][model]
    ours = moved["loaded"][dst][f"{model}/{src}"]
    reference = core_logits(source_params(model, src), x.reshape(-1, *spec.input_shape), spec)
    scale = float(np.max(np.abs(reference)))
    what = f"{model}: {src} -> {dst}"
    # Within float32 rounding of the core's float64 logits, as each framework's own tests hold them.
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * scale, err_msg=what)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-5 * scale, err_msg=what)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1)), what
    assert np.array_equal(ours.argmax(1), reference.argmax(1)), what


def test_the_file_holds_the_source_parameters_bit_for_bit(moved):
    for model in SPECS:
        for source in FRAMEWORKS:
            spec, params = load_safetensors(file_of(moved["folder"], model, source))
            assert spec == SPECS[model]()
            expected = source_params(model, source)
            assert list(params) == list(expected)
            for name, value in expected.items():
                assert params[name].dtype == np.float32, f"{model}/{source}: {name}"
                np.testing.assert_array_equal(params[name], value, err_msg=f"{model}/{source}: {name}")


# ================================================================ round trips

ROUND_TRIP_SPECS = {
    "mlp": seed_spec(),
    "mlp-options": seed_spec(bias=0.25, alpha=None, learnable_epsilon=True, spherical=True, epsilon=0.5),
    "cnn": cnn_spec(),
    "vit": vit_spec(),
    "vit-softmax": vit_softmax_spec(),
    "conv-options": ModelSpec(
        (
            LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3), padding="same", groups=2),
            LayerSpec(
                "yat_conv_transpose", 4, 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1)
            ),
            LayerSpec("avg_pool", 2, 2, kernel_size=(2, 2)),
            LayerSpec("flatten", 2, 2 * 5 * 5),
            LayerSpec("linear", 50, 3, activation="relu", bias=None),
        ),
        input_shape=(2, 5, 5),
    ),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_SPECS))
def test_spec_json_round_trip(name):
    spec = ROUND_TRIP_SPECS[name]
    text = spec_to_json(spec)
    assert spec_from_json(text) == spec
    json.loads(text)  # plain JSON, no NaN or Infinity


@pytest.mark.parametrize("name", list(ROUND_TRIP_SPECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_safetensors_round_trip_keeps_spec_names_shapes_dtypes_and_bits(name, dtype, tmp_path):
    spec = ROUND_TRIP_SPECS[name]
    params = {k: v.astype(dtype) for k, v in init_mlp_numpy(spec, 3).items()}
    path = save_safetensors(tmp_path / "w.safetensors", dict(reversed(list(params.items()))), spec)
    loaded_spec, loaded = load_safetensors(path)
    assert loaded_spec == spec
    assert list(loaded) == list(spec.param_shapes)
    for key, value in params.items():
        assert loaded[key].dtype == dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_the_metadata_names_the_format_and_its_version(tmp_path):
    from safetensors import safe_open

    path = save_safetensors(tmp_path / "w.safetensors", init_mlp_numpy(vit_spec(), 0), vit_spec())
    with safe_open(path, framework="np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "yat-core" and metadata["format_version"] == str(FORMAT_VERSION)
    assert spec_from_json(metadata["spec"]) == vit_spec()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_and_load_weights_pick_the_format_by_suffix(suffix, tmp_path):
    spec = cnn_spec()
    params = init_mlp_numpy(spec, 0)
    path = save_weights(tmp_path / f"w{suffix.upper()}", params, spec)
    stored, loaded = load_weights(path, spec)
    assert stored == spec
    assert load_weights(path)[0] == (spec if suffix == ".safetensors" else None)
    for key, value in params.items():
        np.testing.assert_array_equal(loaded[key], value)
    magic = path.read_bytes()[:2]
    assert (magic == b"PK") == (suffix == ".npz")


def test_an_npz_file_moves_between_frameworks_too(tmp_path):
    torch_nn = pytest.importorskip("yat_core.nn.torch")
    pytest.importorskip("mlx.nn")
    spec = vit_spec()
    source = torch_nn.import_params(torch_nn.build_model(spec, 0), random_params(spec, 7))
    path = export_weights("torch", source, tmp_path / "vit.npz")
    with pytest.raises(WeightFileError, match="holds no model spec; pass spec="):
        build_from_file("mlx", path)
    target = build_from_file("mlx", path, spec=spec)
    x = sample(spec)
    theirs = torch_nn.predict(source, x)
    ours = get_framework("mlx").predict(target, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-5 * float(np.max(np.abs(theirs))))
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


def test_unknown_suffix_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"unknown format '\.pt'; name it \*\.safetensors or \*\.npz"):
        save_weights(tmp_path / "w.pt", init_mlp_numpy(seed_spec(), 0), seed_spec())
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_parameters_of_another_model_and_non_finite_values(tmp_path):
    spec = seed_spec()
    with pytest.raises(ValueError, match=r"0\.kernel has shape \(32, 1, 3, 3\), expected \(256, 784\)"):
        save_safetensors(tmp_path / "w.safetensors", init_mlp_numpy(cnn_spec(), 0), spec)
    params = init_mlp_numpy(spec, 0)
    params["1.bias"][3] = np.nan
    with pytest.raises(WeightFileError, match=r"refusing to write non-finite values: 1\.bias \(1 NaN"):
        save_weights(tmp_path / "w.safetensors", params, spec)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.numpy

    spec = seed_spec()
    path = save_safetensors(tmp_path / "w.safetensors", init_mlp_numpy(spec, 0), spec)
    before = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(path, init_mlp_numpy(spec, 1), spec)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# ================================================================ bad files


@pytest.fixture
def good(tmp_path: Path) -> Path:
    spec = ModelSpec((LayerSpec("yat", 6, 4), LayerSpec("linear", 4, 3)))
    return save_safetensors(tmp_path / "good.safetensors", init_mlp_numpy(spec, 0), spec)


def raw_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> Path:
    import safetensors.numpy

    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    return path


def good_metadata(good: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(good, framework="np") as handle:
        return dict(handle.metadata())


def refused(path: Path, pattern: str) -> str:
    """The message of loading ``path``; it must name the file and match ``pattern``."""
    with pytest.raises(WeightFileError, match=pattern) as info:
        load_weights(path)
    message = str(info.value)
    assert message.startswith(f"weight file {path}: "), message
    return message


def test_missing_file(tmp_path):
    refused(tmp_path / "absent.safetensors", "file not found")
    refused(tmp_path / "absent.npz", "file not found")
    (tmp_path / "dir.safetensors").mkdir()
    refused(tmp_path / "dir.safetensors", "is a directory")


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1], ids=["empty", "5-bytes", "length-only", "in-header", "last-byte"])
def test_truncated_file(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[: keep if keep >= 0 else len(data) - 1])
    refused(good, r"not a readable safetensors file \(truncated or corrupt\?\)")


def test_corrupt_file(good):
    good.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    refused(good, "not a readable safetensors file")
    good.write_bytes(os.urandom(64))
    refused(good, "not a readable safetensors file")


def test_truncated_and_corrupt_npz(tmp_path):
    path = save_npz(tmp_path / "w.npz", init_mlp_numpy(seed_spec(), 0))
    path.write_bytes(path.read_bytes()[:1000])
    refused(path, r"not a readable \.npz file \(truncated or corrupt\?\)")
    path.write_bytes(b"not a zip file")
    refused(path, r"not a readable \.npz file")


@pytest.mark.parametrize("metadata", [None, {"note": "someone else's"}], ids=["none", "foreign"])
def test_metadata_without_a_spec(good, metadata):
    tensors = load_safetensors(good)[1]
    refused(raw_file(good, tensors, metadata), "its metadata holds no yat-core model spec")


def test_a_later_format_version(good):
    tensors = load_safetensors(good)[1]
    metadata = {**good_metadata(good), "format_version": str(FORMAT_VERSION + 1)}
    refused(raw_file(good, tensors, metadata), f"format version {FORMAT_VERSION + 1} is newer")
    refused(raw_file(good, tensors, {**metadata, "format_version": "one"}), "no valid format_version")


@pytest.mark.parametrize(
    ("spec_text", "pattern"),
    [
        ("{not json", "the model spec in its metadata is invalid: the model spec is not valid JSON"),
        ('{"layers": []}', "needs 'input_shape' and a list of 'layers'"),
        ('{"input_shape": [6], "layers": [{"kind": "yat", "in_features": 6, "out_features": 4, "colour": 1}]}',
         "layer 0 of the model spec has unknown fields: colour"),
        ('{"input_shape": [6], "layers": [{"kind": "fft", "in_features": 6, "out_features": 4}]}',
         "layer 0 of the model spec: unknown layer kind 'fft'"),
        ('{"input_shape": [6], "layers": []}', "a model needs at least one layer"),
    ],
    ids=["not-json", "no-input-shape", "unknown-field", "unknown-kind", "no-layers"],
)  # fmt: skip
def test_an_invalid_spec_in_the_metadata(good, spec_text, pattern):
    tensors = load_safetensors(good)[1]
    refused(raw_file(good, tensors, {**good_metadata(good), "spec": spec_text}), pattern)


def test_a_spec_that_does_not_fit_the_tensors_is_found_from_the_header(good, monkeypatch):
    spec, tensors = load_safetensors(good)
    metadata = good_metadata(good)
    del tensors["0.alpha"]
    tensors["0.kernel"] = np.zeros((4, 5), np.float32)
    tensors["9.extra"] = np.zeros(2, np.float32)
    raw_file(good, tensors, metadata)

    # No array may be read before the header's names and shapes are checked.
    def no_data(*args: Any) -> None:
        raise AssertionError("an array was read before the header was checked")

    monkeypatch.setattr(weights, "_read_tensor", no_data)
    message = refused(good, "its tensors do not fit the model in its metadata")
    assert "missing 0.alpha (shape ())" in message
    assert "0.kernel has shape (4, 5), expected (4, 6)" in message
    assert "unexpected 9.extra" in message


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_a_wrong_dtype(good, dtype):
    spec, tensors = load_safetensors(good)
    tensors["1.bias"] = tensors["1.bias"].astype(dtype)
    refused(raw_file(good, tensors, good_metadata(good)), r"must be float16, float32 or float64; not so: 1\.bias")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(good, bad):
    spec, tensors = load_safetensors(good)
    tensors["0.kernel"][1, 2] = bad
    message = refused(raw_file(good, tensors, good_metadata(good)), r"holds non-finite values: 0\.kernel")
    assert ("1 NaN" if np.isnan(bad) else "1 infinite") in message


def test_non_finite_values_in_npz(tmp_path):
    params = init_mlp_numpy(seed_spec(), 0)
    params["2.kernel"][0, :3] = np.inf
    refused(save_npz(tmp_path / "w.npz", params), r"holds non-finite values: 2\.kernel \(0 NaN, 3 infinite")


def test_a_file_of_another_model_is_refused_by_import(tmp_path):
    torch_nn = pytest.importorskip("yat_core.nn.torch")
    spec = seed_spec()
    model = torch_nn.build_model(spec, 0)
    before = torch_nn.export_params(model)
    other = seed_spec(epsilon=0.5)
    path = save_safetensors(tmp_path / "other.safetensors", init_mlp_numpy(other, 1), other)
    with pytest.raises(
        WeightFileError, match=r"it holds another model: layer 0 has epsilon 0\.5 \(the model's: 1e-05\)"
    ):
        import_weights("torch", model, path)
    npz = save_npz(tmp_path / "cnn.npz", init_mlp_numpy(cnn_spec(), 1))
    with pytest.raises(WeightFileError, match=r"cnn\.npz: parameters do not fit the model: missing"):
        import_weights("torch", model, npz)
    after = torch_nn.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a refused file changed the model"


def test_absent_safetensors_names_the_extra_for_writing_and_is_not_needed_for_reading(good, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    spec, params = load_weights(good)
    with pytest.raises(ImportError, match=r"pip install 'yat-core\[safetensors\]'"):
        save_weights(good, params, spec)


def test_importing_yat_core_weights_loads_no_safetensors():
    code = "import sys, yat_core.weights, yat_core.cli; assert 'safetensors' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ================================================================ yat-core train --export


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST-format folder: 64 training and 16 test images."""
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist-tiny"), 64, 16)


def train_cli(mnist_dir: Path, tmp_path: Path, *extra: str) -> int:
    from yat_core import cli

    argv = ["train", "--data-dir", str(mnist_dir), "--epochs", "1", "--batch-size", "32", "--quiet"]
    return cli.main([*argv, "--report", str(tmp_path / "receipt.json"), *extra])


@pytest.mark.parametrize(
    ("model", "how"),
    [("mlp", ("--backend", "numpy")), ("vit", ("--framework", "torch"))],
    ids=["mlp-numpy", "vit-torch"],
)
def test_train_export_writes_a_safetensors_file_that_rebuilds_the_trained_model(model, how, mnist_dir, tmp_path):
    pytest.importorskip("torch")
    export = tmp_path / "out" / "model.safetensors"
    assert train_cli(mnist_dir, tmp_path, "--model", model, *how, "--export", str(export)) == 0
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["export"] == str(export)
    assert sorted(p.name for p in export.parent.iterdir()) == ["model.safetensors"]  # no temporary left
    spec, params = load_safetensors(export)
    assert spec == SPECS[model]()
    initial, first = init_mlp_numpy(spec, 0), next(iter(spec.param_shapes))
    assert not np.array_equal(params[first], initial[first]), "the export holds untrained weights"
    torch_nn = get_framework("torch")
    rebuilt = build_from_file("torch", export)
    x = sample(spec)
    np.testing.assert_allclose(
        torch_nn.predict(rebuilt, x), core_logits(params, x.reshape(-1, *spec.input_shape), spec), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", ["w.pt", "w"])
def test_train_export_refuses_an_unknown_suffix_before_training(name, mnist_dir, tmp_path, capsys):
    assert train_cli(mnist_dir, tmp_path, "--backend", "numpy", "--export", str(tmp_path / name)) == 1
    err = capsys.readouterr().err
    assert err.startswith("yat-core: error: --export") and "*.safetensors or *.npz" in err and err.count("\n") == 1
    assert not (tmp_path / "receipt.json").exists(), "it trained before refusing the export path"


if __name__ == "__main__":
    _keras_script(Path(sys.argv[1]))
