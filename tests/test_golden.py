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


# The default suite checks 13 of the 24 float32 cases, one of each driver path (samplers, control
# variates, SGHMC, moments/SWAG, optimize, fit, checkpoint/resume of all three, 8-device
# sharding, the NumPyro kernel, divergence handling); the other 11 (more integrators, estimators
# and VI families over the same paths) and the float64 check are slow, within the default
# suite's time budget (about a minute each of compilation on 2 cores). Run all of them with
# `python -m pytest -m slow tests/test_golden.py`.
DEFAULT_CASES = ["sgld", "sgld_cv_auto_centre", "checkpoint_and_resume_sample", "sghmc_obabo_default",
                 "sgnht_logdensity_single_chain_thinned_chunked_init", "adam_langevin_moments_swag",
                 "optimize_default_adam", "checkpoint_and_resume_optimize", "fit_fbgvi_full",
                 "checkpoint_and_resume_fit", "shard_chains", "numpyro_sgld_mcmc", "divergence_stop_restart"]


def _other_cases(env):
    """Every case not in DEFAULT_CASES (golden_cases.py is not imported here: it fixes JAX's
    precision and device count at import)."""
    out = subprocess.run([sys.executable, SCRIPT, "list"], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    names = [line.split(":")[0] for line in out.stdout.splitlines() if line.strip()]
    assert set(DEFAULT_CASES) <= set(names), sorted(set(DEFAULT_CASES) - set(names))
    return [name for name in names if name not in DEFAULT_CASES]


@pytest.mark.parametrize("precision, cases", [
    pytest.param("f32", "default", id="f32"),
    pytest.param("f32", "others", id="f32-others", marks=pytest.mark.slow),
    pytest.param("f64", "all", id="f64", marks=pytest.mark.slow),
])
def test_golden_draws_are_reproduced(precision, cases):
    names = {"default": DEFAULT_CASES, "all": [], "others": None}[cases]
    env = dict(os.environ)
    env.pop("JAX_ENABLE_X64", None)
    if precision == "f64":
        env["JAX_ENABLE_X64"] = "1"
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    path = os.path.join(GOLDEN, f"golden_{precision}.npz")
    if names is None:
        names = _other_cases(env)
    cmd = [sys.executable, SCRIPT, "check", path] + (["--cases", ",".join(names)] if names else [])
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    if out.returncode == 3:  # golden_cases.NO_RECORDING: no recording made on this CPU model
        pytest.skip(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, (
        f"golden check ({precision}) failed with exit code {out.returncode}:\n"
        f"{out.stdout[-12000:]}\n--- stderr ---\n{out.stderr[-6000:]}"
    )
