"""The physical floor: the epoch's FLOP count and this machine's fp32 matmul rate, measured now."""

from __future__ import annotations

from typing import Any

from benchmarks.floor import measure_floor
from benchmarks.flops import epoch_flops
from benchmarks.profiles import Profile
from yat_core.mlp import seed_spec


def test_matmul_floor(collector: Any, profile: Profile, floor_on: tuple[str, ...]) -> None:
    floor = measure_floor(repeats=profile.floor_repeats, devices=floor_on)
    collector.add_floor(floor)
    assert floor["flops_per_epoch"] == epoch_flops(seed_spec())
    assert abs(floor["flops_per_epoch"] / 1e9 - 60.4) < 0.05, "DESIGN.md section 4 counts 60.4 GFLOP per epoch"
    cpu = floor["floor"].get("cpu")
    assert cpu is not None, f"no library could multiply matrices here: {floor['errors']}"
    assert cpu["gflops"] > 0 and cpu["seconds"] > 0
    for device in floor_on:
        assert device in floor["floor"], f"no {device} matmul rate: {floor['errors']}"
