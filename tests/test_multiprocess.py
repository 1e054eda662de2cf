"""Several processes through ``jax.distributed`` (gloo CPU collectives) on localhost: the
README's launch recipe (tests/multiprocess_worker.py) with 2 processes of 4 simulated devices
each gives the draws of 1 process with the same 8 devices, for shard="chains", shard="data"
and a federated FSGLD run. Slow (two JAX processes per case)."""

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


def launch(num_processes, mode, out, devices_per_process):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    port = str(_port())
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), port, mode, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return np.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["chains", "data", "federated"])
def test_two_processes_give_the_one_process_draws(mode, tmp_path):
    one = launch(1, mode, str(tmp_path / "one.npz"), 8)
    two = launch(2, mode, str(tmp_path / "two.npz"), 4)
    for k in one.files:
        np.testing.assert_allclose(one[k], two[k], rtol=1e-5, atol=1e-6)
