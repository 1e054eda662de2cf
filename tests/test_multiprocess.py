"""Several processes through ``jax.distributed`` (gloo CPU collectives) on localhost: the
README's launch recipe (tests/multiprocess_worker.py) with 2 processes of 4 simulated devices
each gives the draws of 1 process with the same 8 devices, for shard="chains", shard="data"
and a federated FSGLD run (chains sharded, and the shards placed whole on the devices); a
2-process checkpointed run killed after its second commit and resumed gives the uninterrupted
draws (process 0 writes the checkpoint). Slow (two JAX processes per case)."""

import json

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")


def _port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(num_processes, mode, out, devices_per_process, status=0):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    port = str(_port())
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), port, mode, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == status for p in procs), "\n".join(log[-3000:] for log in logs)
    return np.load(out) if status == 0 else None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["chains", "data", "federated", "federated-data"])
def test_two_processes_give_the_one_process_draws(mode, tmp_path):
    one = launch(1, mode, str(tmp_path / "one.npz"), 8)
    two = launch(2, mode, str(tmp_path / "two.npz"), 4)
    for k in one.files:
        np.testing.assert_allclose(one[k], two[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_process_checkpoint_killed_then_resumed_gives_the_uninterrupted_draws(tmp_path):
    out = str(tmp_path / "run.npz")
    full = launch(2, "federated-data", str(tmp_path / "full.npz"), 4)
    launch(2, "ckpt-stop", out, 4, status=3)
    # One writer: one directory, committed after 2 of the 5 chunks of 10 draws, no per-process copies.
    with open(out + ".ckpt/meta.json") as f:
        meta = json.load(f)
    assert meta["segments_done"] == 2 and [d["segment"] for d in meta["draws"]] == [0, 1]
    assert sorted(os.listdir(out + ".ckpt")) == [".lock", "draws_000000.npz", "draws_000001.npz", "meta.json",
                                                   "state_000002.npz"]
    resumed = launch(2, "ckpt-resume", out, 4)
    assert resumed["theta"].shape == (8, 50, 2)
    for k in full.files:
        np.testing.assert_array_equal(full[k], resumed[k])
