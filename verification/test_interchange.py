"""Every framework's trained weights load into every other framework and predict the same."""

from __future__ import annotations

import pytest

from verification import interchange
from verification.results import STORE


@pytest.fixture(scope="session")
def matrix() -> dict:
    for name in interchange.FRAMEWORKS:
        pytest.importorskip({"nnx": "flax", "linen": "flax", "tf": "tensorflow", "mlx": "mlx.core"}.get(name, name))
    result = interchange.run()
    STORE.meta["interchange"] = result
    return result


@pytest.mark.parametrize("source", interchange.FRAMEWORKS)
def test_weights_trained_in_one_framework_predict_the_same_in_every_other(matrix, source):
    rows = [r for r in matrix["pairs"] if r["source"] == source]
    assert len(rows) == len(interchange.FRAMEWORKS)
    for row in rows:
        where = f"{source} -> {row['target']}"
        assert row["same_argmax"] == row["n"], f"{where}: {row['n'] - row['same_argmax']} classes differ"
        assert row["max_diff_over_bound"] <= 1.0, f"{where}: logits differ beyond the error model ({row})"
        assert row["test_acc"] > 0.85, f"{where}: the weights did not train ({row['test_acc']:.4f})"
