"""Suite-wide settings.

``hb.sample`` ends every run with a self-diagnosis (heatbath.drivers.selfcheck). Its "full"
level compiles a gradient and Hessian-vector products per model (seconds each), which the
hundreds of small runs of this suite do not need: the suite runs the "basic" level (R-hat,
ESS, kinetic temperature) unless a test asks for more (tests/test_defaults.py does).

Most of the suite's time is XLA compiling: many tests compile the same programs (the same
model, sampler and shapes built again from new closures, which the drivers' in-process caches
cannot see across tests or across the two xdist workers). JAX's persistent compilation cache,
in a directory shared by the workers of one run and new for each run (a fresh clone pays every
compile once, and a stale cache never hides a change), gives those repeats the compiled program.
A cache hit is the executable XLA built for the same HLO, flags and backend, so results are
bit-identical. ``HEATBATH_TEST_JAX_CACHE=off`` turns it off; a path uses that directory.
"""

import os
import tempfile

os.environ.setdefault("HEATBATH_CHECKS", "basic")


_RUN = "HEATBATH_TEST_JAX_CACHE_RUN"  # the run's directory, made by the controller, inherited by its workers


def pytest_configure(config):
    where = os.environ.get("HEATBATH_TEST_JAX_CACHE")
    if where == "off":
        return
    path = where or os.environ.get(_RUN)
    if path is None:  # the controller (or a plain run): a new directory for this run
        path = tempfile.mkdtemp(prefix="heatbath-test-jax-cache-")
        os.environ[_RUN] = path
        config._heatbath_cache_owned = path
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = getattr(config, "_heatbath_cache_owned", None)
    if path is not None:  # the controller ends after its workers: the run's cache goes with it
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_RUN, None)
