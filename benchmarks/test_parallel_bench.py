"""The data-parallel throughput benchmark's command lines and report (no timing)."""

from __future__ import annotations

from benchmarks.parallel import SETUPS, Setup, commands, render


def test_each_setup_launches_as_a_user_would():
    flags = ["--epochs", "2"]
    one, torchrun, _, devices, distributed = (commands(s, flags, "r.json") for s in SETUPS)
    assert one[0][1:5] == ["-m", "yat_core", "train", "--backend"] and "--devices" not in one[0]
    assert torchrun[0][1:5] == ["-m", "torch.distributed.run", "--nproc-per-node", "2"]
    assert devices[0][devices[0].index("--devices") + 1] == "2"
    ids = [cmd[cmd.index("--process-id") + 1] for cmd in distributed]
    coordinators = {cmd[cmd.index("--coordinator") + 1] for cmd in distributed}
    assert ids == ["0", "1"] and len(coordinators) == 1  # one coordinator both processes join


def test_ratios_are_against_one_process_of_the_same_backend():
    ok = {"status": "ok", "wall_s": 5.0, "test_acc": 0.95}
    runs = [
        {"setup": list(Setup("jax", 1, 1, "one process")), **ok, "samples_per_s": 200.0},
        {"setup": list(Setup("jax", 1, 2, "--devices")), **ok, "samples_per_s": 150.0},
        {"setup": list(Setup("torch", 2, 1, "torchrun")), **ok, "samples_per_s": 90.0},
        {"setup": list(Setup("jax", 2, 1, "jax.distributed")), "status": "error", "reason": "boom\nport in use"},
    ]
    text = render({"machine": {"cores": 2}, "gpus": 0, "flags": ["--epochs", "2"], "runs": runs})
    assert "| jax | --devices | 1 | 2 | 150 | 0.75x |" in text
    assert "| torch | torchrun | 2 | 1 | 90 | n/a |" in text  # no one-process torch run to compare with
    assert "error: port in use" in text
    assert "not a speed-up" in text


def test_a_machine_with_gpus_says_where_scaling_can_be_seen():
    text = render({"machine": {"cores": 16}, "gpus": 8, "flags": [], "runs": []})
    assert "8 GPUs" in text and "not a speed-up" not in text
