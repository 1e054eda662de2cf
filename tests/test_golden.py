"""Golden draws: the drivers reproduce, bit for bit, the outputs recorded before a refactor.

``tests/golden_cases.py`` defines small runs of every driver path (samplers, gradient
estimators, optimize, fit, checkpoint/resume, sharding over 8 simulated devices, the NumPyro
kernel); ``tests/golden/golden_f32.npz`` and ``golden_f64.npz`` hold what they returned.
Each test runs ``golden_cases.py check`` in a fresh interpreter (the precision and the 8
host devices must be fixed before JAX is imported). To re-record after an intended change
of the numbers: ``python tests/golden_cases.py record tests/golden/golden_f32.npz`` (and
with ``JAX_ENABLE_X64=1`` for ``golden_f64.npz``). XLA's CPU code depends on the instruction set:
a machine of another CPU model uses ``golden_f32.<cpu-model>.npz`` (recorded the same way,
e.g. ``python tests/golden_cases.py record tests/golden/golden_f32.intel-r-xeon-r-processor.npz``)
and skips when there is none. ``GOLDEN_JOBS=2`` runs the cases in two
worker processes.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "golden_cases.py")
GOLDEN = os.path.join(HERE, "golden")


# The float64 check is marked slow (about a minute of compilation on 2 cores, which would grow
# the default suite past its budget); run it with `python -m pytest -m slow tests/test_golden.py`.
@pytest.mark.parametrize("precision", ["f32", pytest.param("f64", marks=pytest.mark.slow)])
def test_golden_draws_are_reproduced(precision):
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)
    if precision == "f64":
        env["JAX_ENABLE_X64"] = "1"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    path = os.path.join(GOLDEN, f"golden_{precision}.npz")
    out = subprocess.run([sys.executable, SCRIPT, "check", path], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    if out.returncode == 3:  # golden_cases.NO_RECORDING: no recording made on this CPU model
        pytest.skip(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (
        f"golden check ({precision}) failed with exit code {out.returncode}:\n"
        f"{out.stdout[-12000:]}\n--- stderr ---\n{out.stderr[-6000:]}"
    )
