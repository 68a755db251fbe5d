"""Epoch timing: a fresh training process per backend/device, network and model.

The Yat rows run the user's own ``yat-core train`` command (so its wall time is
the end-to-end time of a run); the ``Linear + ReLU`` baseline and the ``nmn``
layer run the same loop through :mod:`benchmarks.worker`. ``nmn`` is optional:
without it those tests are skipped and the report shows "n/a".
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.devices import Target
from benchmarks.epochs import run_epoch_bench
from benchmarks.profiles import Profile

#: A full-data run of the recipe reaches about 95%; far below that, the timed run did not
#: really train and its timing means little. (Quick-profile runs see a few thousand images
#: only, too few to judge any model by.)
MIN_TEST_ACC = 0.5


def test_epochs(
    collector: Any, profile: Profile, mnist: Any, bench_target: Target, bench_network: str, epoch_model: str
) -> None:
    target, network = bench_target, bench_network
    record = run_epoch_bench(target, epoch_model, profile, network=network)
    collector.add_epoch(record)
    if record["status"] == "n/a":
        pytest.skip(record["reason"])
    assert record["status"] == "ok", f"{target.label} {network} {epoch_model}: {record.get('reason')}"
    if profile.plan(network).train_limit is None:
        assert record["test_acc"] > MIN_TEST_ACC, (
            f"{target.label} {network} {epoch_model} reached only {record['test_acc']:.1%} test accuracy: "
            "the timed run did not train"
        )
