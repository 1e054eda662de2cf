#!/usr/bin/env python
"""Golden draws: exact outputs of a fixed set of small runs, checked bit for bit.

Each case below runs heatbath through its public API only (``hb.sample``, ``hb.optimize``,
``hb.fit``, ``hb.numpyro`` with ``numpyro.infer.MCMC``) on tiny models and returns a flat dict
name -> numpy array of everything numeric a user sees (draws, stats, final states, traces,
Gaussian states and their derived quantities, cost counters); wall-clock fields are left out.
The recorded arrays live in ``tests/golden/golden_f32.npz`` and ``golden_f64.npz``.

    python tests/golden_cases.py record OUTFILE [--cases a,b,...]
    python tests/golden_cases.py check FILE [--cases a,b,...]
    python tests/golden_cases.py list

Precision comes from the environment (``JAX_ENABLE_X64=1`` for float64, unset for float32),
set by the caller. The script adds ``--xla_force_host_platform_device_count=8`` to ``XLA_FLAGS``
itself before JAX is imported (the ``shard=`` cases need 8 devices) and defaults
``JAX_PLATFORMS`` to ``cpu``. ``--jobs N`` (or ``GOLDEN_JOBS=N``) runs the cases in N worker
processes.

Almost all of the time is XLA compilation (each case compiles its own loop). To reuse compiled
programs across checks, e.g. while refactoring, set ``JAX_COMPILATION_CACHE_DIR=/some/dir``:
JAX's persistent cache is keyed by the compiled program (not by source lines), so only what
a change really alters is recompiled, and a cached program computes the same bits.

``check`` compares bit for bit (NaNs at the same places count as equal) when the jax, jaxlib,
numpyro, optax and numpy versions, the backend and the CPU model are the ones the file was
recorded with; with other versions it compares with rtol 1e-4 (float32) / 1e-10 (float64),
and says so. On another CPU model it uses ``golden_f32.<cpu-model>.npz`` when that recording
exists (exit code 3, "no recording", otherwise: the test then skips). It prints, for
every case that differs, the first differing array, and exits 1 (0 when everything matches).
Bit-exactness is also only expected on the same kind of CPU (XLA's CPU code generation
depends on the host's instruction set). One CPU model name and instruction set can still cover
micro-architectures whose code differs in the last bits: a recording
``golden_f32.<cpu-model>-<isa>-f<family>-m<model>.npz`` made on this micro-architecture (same
versions) is accepted as well; a case passes when it equals either recording bit for bit. Where
neither recording was made on this micro-architecture, differences end in "no recording" (exit
code 3) with the command that records one, not in a failure.
"""

from __future__ import annotations

import os
import sys

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if "jax" not in sys.modules:
    if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the goldens are CPU results
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # opt-in: cache every compile, however small
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402

import heatbath as hb  # noqa: E402

X64 = bool(jax.config.jax_enable_x64)
FLOAT = np.float64 if X64 else np.float32

# ----------------------------------------------------------------------------------------
# Problems: a small hierarchical logistic regression (NumPyro, with a data plate, a
# positive site and a deterministic site) and the same likelihood as a plain log density.
# ----------------------------------------------------------------------------------------
N, D, BATCH = 200, 4, 20
COMMON = dict(progress_bar=False)


def _data():
    rng = np.random.default_rng(20261125)
    X = rng.normal(size=(N, D))
    w = np.array([1.0, -0.5, 0.25, 0.0])[:D]
    y = (rng.uniform(size=N) < 1.0 / (1.0 + np.exp(-(X @ w + 0.3)))).astype(np.float64)
    return X.astype(FLOAT), y.astype(FLOAT)


X_DATA, Y_DATA = _data()
DATA = {"X": X_DATA, "y": Y_DATA}


def model(X, y):
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    w = numpyro.sample("w", dist.Normal(0.0, tau).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    numpyro.deterministic("w_norm", jnp.sqrt(jnp.sum(w**2)))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def _logprior(p):
    return -0.5 * jnp.sum(p["w"] ** 2) - 0.5 * p["b"] ** 2


def _loglik(p, batch):
    X, y = batch
    z = X @ p["w"] + p["b"]
    return jnp.sum(y * z - jax.nn.softplus(z))


_TARGET = None


def target():
    """The logistic regression as ``hb.models.from_logdensity`` (one object, reused)."""
    global _TARGET
    if _TARGET is None:
        _TARGET = hb.models.from_logdensity(
            _logprior, _loglik, (X_DATA, Y_DATA), params={"w": jnp.zeros(D), "b": jnp.zeros(())}
        )
    return _TARGET


def gaussian_target():
    """N(0, I) in 2-D with a dummy data axis (for the divergence cases)."""
    return hb.models.from_logdensity(
        lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((4,), FLOAT), params=jnp.zeros(2)
    )


SAMPLE = dict(data=DATA, batch_size=BATCH, num_samples=30, num_warmup=0, num_chains=2, seed=1, **COMMON)

# ----------------------------------------------------------------------------------------
# Flattening what a user sees into name -> array
# ----------------------------------------------------------------------------------------


def _leaf(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def flat(prefix: str, tree) -> dict:
    """name -> array for every leaf of ``tree`` (names from the key paths)."""
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in leaves:
        name = prefix + jax.tree_util.keystr(path)
        if name in out:
            raise RuntimeError(f"duplicate name {name}")
        out[name] = _leaf(leaf)
    return out


def scalar(x, dtype=np.float64):
    return np.asarray(x, dtype)


def result_arrays(res, prefix="") -> dict:
    """A ``hb.Result``: samples, stats, final state, moments, centre, cost counters."""
    out = {}
    out.update(flat(prefix + "samples", res.samples))
    out.update(flat(prefix + "stats", res.stats))
    out.update(flat(prefix + "final_state", res.final_state))
    if res.moments is not None:
        out.update(flat(prefix + "moments", res.moments))
    if res.centre is not None:
        out.update(flat(prefix + "centre", res.centre))
    out[prefix + "grad_evals"] = scalar(res.grad_evals)
    out[prefix + "num_data"] = scalar(res.num_data, np.int64)
    out[prefix + "data_passes"] = scalar(res.data_passes)
    out[prefix + "num_chains"] = scalar(res.num_chains, np.int64)
    out[prefix + "num_draws"] = scalar(res.num_draws, np.int64)
    out[prefix + "sampler_name"] = np.asarray(res.sampler_name)
    out[prefix + "diverged_chains"] = np.asarray(res.diverged_chains(), np.int64)
    return out


def optimize_arrays(res, prefix="") -> dict:
    out = {}
    out.update(flat(prefix + "params", res.params))
    out.update(flat(prefix + "values", res.values))
    out.update(flat(prefix + "trace", res.trace))
    out[prefix + "grad_evals"] = scalar(res.grad_evals)
    out[prefix + "num_data"] = scalar(res.num_data, np.int64)
    return out


def gaussian_arrays(q, prefix="", methods=False) -> dict:
    """A ``hb.Gaussian``: state, trace, counters, moments; with ``methods`` also what its
    methods compute (each compiles, so only where asked)."""
    out = {}
    out.update(flat(prefix + "state", q.state))
    out.update(flat(prefix + "trace", q.trace))
    if q.trace_states is not None:
        out.update(flat(prefix + "trace_states", q.trace_states))
    for name in ("grad_calls", "hvp_calls", "grad_evals", "hvp_evals", "data_passes"):
        out[prefix + name] = scalar(getattr(q, name))
    out[prefix + "num_data"] = scalar(q.num_data, np.int64)
    out[prefix + "num_steps"] = scalar(q.num_steps, np.int64)
    out[prefix + "dim"] = scalar(q.dim, np.int64)
    out[prefix + "method_name"] = np.asarray(q.method_name)
    out[prefix + "mean_flat"] = np.asarray(q.mean_flat)
    out.update(flat(prefix + "mean", q.mean))
    out[prefix + "cov"] = np.asarray(q.cov)
    out[prefix + "variance"] = np.asarray(q.variance)
    if methods:
        out[prefix + "sd"] = np.asarray(q.sd)
        out[prefix + "entropy"] = scalar(q.entropy())
        out[prefix + "elbo"] = scalar(q.elbo(key=3, num_samples=16))
        out.update(flat(prefix + "draws", q.sample(5, 6)))
        out.update(flat(prefix + "draws_unconstrained", q.sample(5, 6, constrained=False)))
    return out


# ----------------------------------------------------------------------------------------
# Interrupting a checkpointed run: a copy of the checkpoint directory as it stood after
# `segment` committed segments is what a run killed right then leaves behind.
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def copy_checkpoint_after(segment: int, dest: str):
    real = hb.checkpoint.Checkpoint.commit
    taken = []

    def commit(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not taken and hb.checkpoint.Checkpoint.read_meta(self.path)["segments_done"] == segment:
            shutil.copytree(self.path, dest)
            taken.append(segment)
        return out

    hb.checkpoint.Checkpoint.commit = commit
    try:
        yield taken
    finally:
        hb.checkpoint.Checkpoint.commit = real
    if not taken:
        raise RuntimeError(f"no checkpoint with {segment} segments done was committed (the partial copy is missing)")


def check_resumed(out: dict, full: str = "full/", resumed: str = "resumed/"):
    """Raise if the resumed run's arrays differ from the uninterrupted run's (NaN == NaN)."""
    for key in sorted(k[len(full):] for k in out if k.startswith(full)):
        a, b = out[full + key], out.get(resumed + key)
        if b is not None and key != "segments_done" and not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            raise AssertionError(f"the resumed run's {key} differs from the uninterrupted run's")


def _segments_done(path) -> np.ndarray:
    return scalar(hb.checkpoint.Checkpoint.read_meta(path)["segments_done"], np.int64)


# ----------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------
CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def sgld():
    """SGLD, minibatches of 20, 2 chains (NumPyro model: constrained and deterministic sites)."""
    return result_arrays(hb.sample(model, hb.samplers.sgld(1e-3), **SAMPLE))


@case
def psgld_correction():
    """pSGLD with the Gamma correction (switched on after ceil(1/(1-0.9)) = 10 steps)."""
    return result_arrays(hb.sample(model, hb.samplers.psgld(5e-3, decay=0.9, correction=True), **SAMPLE))


CV_RUN = dict(batch_size=BATCH, num_samples=30, num_warmup=5, num_chains=2, chunk_size=10, **COMMON)
_CV_SGLD = []


def cv_sgld():
    """One SGLD-CV sampler object for the two cases that use it (the driver caches compiled
    loops by sampler and target object, so the second case compiles nothing new)."""
    if not _CV_SGLD:
        _CV_SGLD.append(hb.samplers.sgld(2e-3, gradient="cv"))
    return _CV_SGLD[0]


@case
def sgld_cv_auto_centre():
    """Control variates with the centre found by the driver's MAP search (from_logdensity target;
    warmup and 3 chunks, the settings of checkpoint_and_resume_sample, whose compiled loop this
    shares)."""
    return result_arrays(hb.sample(target(), cv_sgld(), seed=1, **CV_RUN))


@case
def sgld_svrg():
    """SVRG (centre refreshed every 7 steps), from_logdensity target."""
    s = hb.samplers.sgld(2e-3, gradient=hb.kernels.gradients.svrg(7))
    return result_arrays(hb.sample(target(), s, batch_size=BATCH, num_samples=30, num_warmup=0, num_chains=2, seed=1, **COMMON))


def _sghmc(sampler, **kw):
    return result_arrays(hb.sample(model, sampler, **{**SAMPLE, **kw}))


@case
def sghmc_euler():
    """SGHMC with Chen et al.'s Euler integrator."""
    return _sghmc(hb.samplers.sghmc(0.01, 1.0, "euler"))


@case
def sghmc_lie_trotter_2_steps_per_draw_resampled():
    """Lie-Trotter, 2 steps per draw (Sampler.steps_per_draw), momentum resampled every draw."""
    return _sghmc(hb.samplers.sghmc(0.01, 1.0, "lie_trotter", num_steps_per_sample=2, resample_momentum=True))


@case
def sghmc_obabo_default():
    """The default integrator (OBABO)."""
    return _sghmc(hb.samplers.sghmc(0.01, 1.0))


@case
def sghmc_baoab_averaged_beta_hat():
    """hb.optim.averaged(BAOAB with Chen et al.'s beta-hat correction), averaging from step 4."""
    return _sghmc(hb.optim.averaged(hb.samplers.sghmc(0.01, 1.0, "baoab", gradient_noise=1.0), start=4))


@case
def sghmc_aboba_full_batch_schedule_cold():
    """ABOBA, full-batch gradients, a step-size schedule, T = 0.5."""
    h = hb.kernels.schedules.polynomial_decay(0.01, 1.0, 0.55)
    return _sghmc(hb.samplers.sghmc(h, 2.0, "aboba", temperature=0.5), batch_size=None, num_samples=15)


@case
def sgnht_logdensity_single_chain_thinned_chunked_init():
    """SGNHT on a from_logdensity target; one chain (no chain vmap), thinning, 3 chunks, a user
    init, a JAX key as seed."""
    s = hb.samplers.sgnht(0.01, 1.0)
    res = hb.sample(target(), s, batch_size=BATCH, num_samples=12, num_warmup=0, thinning=3, chunk_size=4, num_chains=1,
                    seed=jax.random.key(7), init={"w": np.array([0.5, -0.5, 0.1, 0.0]), "b": 0.2}, **COMMON)
    return result_arrays(res)


@case
def adam_langevin_moments_swag():
    """hb.samplers.langevin(optax.adam(...)) (Adam-Langevin) with keep="moments", SWAG
    deviations, thinning, two chunks."""
    res = hb.sample(model, hb.samplers.langevin(optax.adam(1e-3)), data=DATA, batch_size=BATCH, num_samples=20,
                    thinning=2, num_warmup=0, chunk_size=10, num_chains=2, seed=3, keep="moments", swag_rank=3, **COMMON)
    return result_arrays(res)


@case
def annealed_sgld_optimize_logdensity_full_batch():
    """hb.optimize with an annealed heatbath sampler (geometric cooling), full batch."""
    s = hb.optim.anneal(hb.samplers.sgld(1e-3), hb.kernels.schedules.geometric_cooling(1.0, 0.9))
    return optimize_arrays(hb.optimize(target(), s, num_steps=60, trace_every=6, seed=6))


OPT_RUN = dict(data=DATA, batch_size=BATCH, num_steps=40, trace_every=2)


@case
def optimize_default_adam():
    """hb.optimize with its default optimizer (optax Adam, cosine decay); 20 chunks of one trace
    point, as checkpoint_and_resume_optimize, whose compiled loop this shares."""
    return optimize_arrays(hb.optimize(model, seed=7, chunk_size=1, **OPT_RUN))


FIT_RUN = dict(data=DATA, batch_size=BATCH, trace_every=2, elbo_samples=8)
_FBGVI_FULL = []


def fbgvi_full():
    """One FB-GVI method object for the two cases that use it (compiled loops are cached by it)."""
    if not _FBGVI_FULL:
        _FBGVI_FULL.append(hb.vi.fbgvi(step_size=2e-3, num_steps=40, antithetic=True))
    return _FBGVI_FULL[0]


@case
def fit_fbgvi_full():
    """FB-GVI, full covariance, antithetic, minibatches; trace states, ELBO trace and the
    Gaussian's methods (cov, sd, entropy, elbo, sample). 20 chunks of one trace point, as
    checkpoint_and_resume_fit, whose compiled loop this shares."""
    q = hb.fit(model, fbgvi_full(), seed=11, chunk_size=1, keep_trace_states=True, **FIT_RUN)
    return gaussian_arrays(q, methods=True)


@case
def fit_fbgvi_diag():
    """FB-GVI, diagonal covariance, 2 draws and 2 Hutchinson probes per step."""
    m = hb.vi.fbgvi(step_size=2e-3, num_steps=40, covariance="diag", num_mc=2, num_probes=2)
    q = hb.fit(model, m, data=DATA, batch_size=BATCH, seed=13, trace_every=5, elbo_samples=0)
    return gaussian_arrays(q)


@case
def fit_fbgvi_lowrank():
    """FB-GVI, diagonal + rank-2 covariance, initial covariance 0.5 I."""
    m = hb.vi.fbgvi(step_size=2e-3, num_steps=40, covariance="lowrank", rank=2, prox_iters=1, init_cov=0.5)
    q = hb.fit(model, m, data=DATA, batch_size=BATCH, seed=14, trace_every=5, elbo_samples=0)
    return gaussian_arrays(q)


@case
def fit_bwsgd_deterministic_exact_kl():
    """BW-SGD, deterministic mode (cubature), full batch, with the exact-KL trace."""
    m = hb.vi.bwsgd(step_size=2e-3, num_steps=40, mode="deterministic")
    d = 1 + D
    q = hb.fit(target(), m, seed=16, trace_every=5, elbo_samples=0, exact=(np.zeros(d), 0.05 * np.eye(d)))
    return gaussian_arrays(q)


@case
def checkpoint_and_resume_sample():
    """A checkpointed run (CV gradients: the centre is checkpointed too; from_logdensity target)
    and a run resumed from a copy of its checkpoint taken after 2 of its 4 segments (1 warmup +
    3 chunks)."""
    kw = dict(seed=18, **CV_RUN)
    s = cv_sgld()
    with tempfile.TemporaryDirectory() as tmp:
        full_dir, part_dir = os.path.join(tmp, "full"), os.path.join(tmp, "partial")
        with copy_checkpoint_after(2, part_dir):
            full = hb.sample(target(), s, checkpoint=full_dir, **kw)
        out = result_arrays(full, "full/")
        out["full/segments_done"] = _segments_done(full_dir)
        out["partial/segments_done"] = _segments_done(part_dir)
        resumed = hb.sample(target(), s, resume=part_dir, **kw)
        out.update(result_arrays(resumed, "resumed/"))
        out["resumed/segments_done"] = _segments_done(part_dir)
    check_resumed(out)
    return out


@case
def checkpoint_and_resume_optimize():
    """hb.optimize checkpointed (20 chunks), resumed from a copy taken after 5."""
    kw = dict(seed=19, **OPT_RUN)
    with tempfile.TemporaryDirectory() as tmp:
        full_dir, part_dir = os.path.join(tmp, "full"), os.path.join(tmp, "partial")
        with copy_checkpoint_after(5, part_dir):
            full = hb.optimize(model, checkpoint=full_dir, **kw)
        out = optimize_arrays(full, "full/")
        out["full/segments_done"] = _segments_done(full_dir)
        resumed = hb.optimize(model, resume=part_dir, **kw)
        out.update(optimize_arrays(resumed, "resumed/"))
        out["resumed/segments_done"] = _segments_done(part_dir)
    check_resumed(out)
    return out


@case
def checkpoint_and_resume_fit():
    """hb.fit checkpointed (20 chunks), resumed from a copy taken after 3."""
    m = fbgvi_full()
    kw = dict(seed=20, **FIT_RUN)
    with tempfile.TemporaryDirectory() as tmp:
        full_dir, part_dir = os.path.join(tmp, "full"), os.path.join(tmp, "partial")
        with copy_checkpoint_after(3, part_dir):
            full = hb.fit(model, m, checkpoint=full_dir, **kw)
        out = gaussian_arrays(full, "full/")
        out["full/segments_done"] = _segments_done(full_dir)
        resumed = hb.fit(model, m, resume=part_dir, **kw)
        out.update(gaussian_arrays(resumed, "resumed/"))
        out["resumed/segments_done"] = _segments_done(part_dir)
    check_resumed(out)
    return out


def _need_devices(n=8):
    if len(jax.devices()) < n:
        raise RuntimeError(f"this case needs {n} devices; run with XLA_FLAGS={_DEVICE_FLAG} set before jax is imported")


@case
def shard_chains():
    """8 chains over the 8 devices."""
    _need_devices()
    return result_arrays(hb.sample(model, hb.samplers.sgld(1e-3), data=DATA, batch_size=BATCH, num_samples=20,
                                   num_warmup=0, num_chains=8, seed=21, shard="chains", **COMMON))


@case
def shard_data_svrg():
    """The 200 rows over the 8 devices; SVRG's full-data gradients are sharded reductions
    (from_logdensity target)."""
    _need_devices()
    s = hb.samplers.sgld(2e-3, gradient=hb.kernels.gradients.svrg(5))
    return result_arrays(hb.sample(target(), s, batch_size=BATCH, num_samples=20, num_chains=2, seed=22,
                                   shard="data", num_warmup=0, **COMMON))


def _mcmc_arrays(mcmc) -> dict:
    out = {}
    out.update(flat("samples", mcmc.get_samples(group_by_chain=True)))
    out.update(flat("extra_fields", mcmc.get_extra_fields(group_by_chain=True)))
    out.update(flat("last_state", mcmc.last_state))
    return out


_EXTRA = ("lp", "step_size", "temperature", "grad_norm", "diverging")


@case
def numpyro_sgld_mcmc():
    """hb.numpyro.SGLD in numpyro.infer.MCMC, 2 vectorized chains, warmup."""
    kernel = hb.numpyro.SGLD(model, step_size=1e-3, batch_size=BATCH)
    mcmc = MCMC(kernel, num_warmup=5, num_samples=30, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(25), X_DATA, Y_DATA, extra_fields=_EXTRA)
    return _mcmc_arrays(mcmc)


@case
def divergence_stop_restart():
    """SGLD with h = 2.5 on N(0, I) diverges; on_divergence = "stop" and "restart"."""
    out = {}
    for mode in ("stop", "restart"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = hb.sample(gaussian_target(), hb.samplers.sgld(2.5), num_samples=40, num_chains=2, seed=28,
                            init=jnp.ones(2), on_divergence=mode, num_warmup=0, **COMMON)
        out.update(result_arrays(res, mode + "/"))
    return out


# ----------------------------------------------------------------------------------------
# Recording and checking
# ----------------------------------------------------------------------------------------
SEP = "::"


def environment() -> dict:
    import jaxlib

    cpu = _cpuinfo().get("model name", "")
    return {
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "numpyro": numpyro.__version__,
            "optax": optax.__version__,
            "numpy": np.__version__,
        },
        "backend": jax.default_backend(),
        "x64": X64,
        "num_devices": len(jax.devices()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu,
        "heatbath": hb.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "microarchitecture": microarchitecture(),
    }


def _run_one(name):
    """Run one case: (arrays or None, traceback or None, wall seconds, CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        arrays = CASES[name]()
        for k, v in arrays.items():
            if not isinstance(v, np.ndarray):
                raise TypeError(f"{name}: {k} is a {type(v).__name__}, not a numpy array")
            if SEP in k:
                raise ValueError(f"{name}: array name {k!r} contains {SEP!r}")
        return arrays, None, time.perf_counter() - t0, time.process_time() - c0
    except Exception:  # noqa: BLE001 - reported per case
        return None, traceback.format_exc(), time.perf_counter() - t0, time.process_time() - c0


def run_cases(names, jobs=1, log=print):
    """Run the cases, in this process (jobs = 1) or in ``jobs`` worker processes (spawned, so
    each imports JAX afresh with this environment; a case's arrays do not depend on where or
    after which other cases it runs)."""
    results, errors, times = {}, {}, {}

    def collect(name, out):
        arrays, err, seconds, cpu = out
        times[name] = seconds
        if err is None:
            results[name] = arrays
        else:
            errors[name] = err
        log(f"  {name:50s} {seconds:6.2f}s (CPU {cpu:6.2f}s){'  ERROR' if err else ''}")

    if jobs <= 1 or len(names) <= 1:
        for name in names:
            collect(name, _run_one(name))
    else:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, name): name for name in names}
            for future in concurrent.futures.as_completed(futures):
                collect(futures[future], future.result())
    return results, errors, times


def _select(arg, available):
    if not arg:
        return list(available)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        sys.exit(f"unknown case(s): {unknown}; see `{sys.argv[0]} list`")
    return names


def record(path, names, jobs=1):
    print(f"recording {len(names)} cases ({'float64' if X64 else 'float32'}) to {path}")
    results, errors, _ = run_cases(names, jobs)
    if errors:
        for name, tb in errors.items():
            print(f"\n{name} failed:\n{tb}")
        sys.exit("not recorded: some cases failed")
    meta = environment()
    meta["cases"] = {name: sorted(results[name]) for name in names}
    meta["order"] = list(names)
    flat_arrays = {f"{name}{SEP}{k}": v for name in names for k, v in sorted(results[name].items())}
    flat_arrays["__meta__"] = np.asarray(json.dumps(meta, sort_keys=True))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **flat_arrays)
    print(f"wrote {path}: {len(flat_arrays) - 1} arrays, {os.path.getsize(path)} bytes")


def load(path):
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        cases = {name: {} for name in meta.get("order", meta["cases"])}
        for key in f.files:
            if key == "__meta__":
                continue
            name, arr = key.split(SEP, 1)
            cases[name][arr] = f[key]
    return meta, cases


def _bits(a):
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def compare(want: np.ndarray, got: np.ndarray, rtol) -> str | None:
    """None if equal (bit for bit when rtol is None), else a description of the difference."""
    if want.dtype != got.dtype:
        return f"dtype {got.dtype}, recorded {want.dtype}"
    if want.shape != got.shape:
        return f"shape {got.shape}, recorded {want.shape}"
    if want.size == 0:
        return None
    inexact = np.issubdtype(want.dtype, np.inexact)
    if not inexact or rtol is None:
        if inexact:
            bad = (_bits(want) != _bits(got)) & ~(np.isnan(want) & np.isnan(got))
        else:
            bad = want != got
    else:
        finite = np.isfinite(want)
        scale = float(np.max(np.abs(want[finite]))) if finite.any() else 1.0
        close = np.isclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30), equal_nan=True)
        bad = ~close
    if not np.any(bad):
        return None
    idx = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0]) if want.ndim else ()
    w, g = want[idx] if want.ndim else want[()], got[idx] if got.ndim else got[()]
    extra = ""
    if inexact:
        with np.errstate(all="ignore"):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        diff = diff[np.isfinite(diff)]
        if diff.size:
            extra = f"; max |diff| {diff.max():.3g}"
    return f"{int(np.sum(bad))} of {want.size} elements differ; first at {idx}: got {g!r}, recorded {w!r}{extra}"


NO_RECORDING = 3  # exit code: no recording for this CPU model


def _cpuinfo() -> dict:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def isa() -> str:
    """The widest x86 vector extension of this CPU (``avx512``, ``avx2``, ...), from /proc/cpuinfo."""
    flags = _cpuinfo().get("flags", "").split()
    for name in ("avx512f", "avx2", "avx", "sse4_2"):
        if name in flags:
            return name.replace("avx512f", "avx512")
    return "unknown-isa"


def microarchitecture() -> str:
    """``f<cpu family>-m<model>`` from /proc/cpuinfo: one CPU model name and instruction set can
    cover several micro-architectures whose XLA code differs in the last bits (an "AMD EPYC"
    with AVX-512, family 25 model 17, differs from the machine golden_f32.npz was recorded on
    in the FB-GVI fits)."""
    fields = _cpuinfo()
    return f"f{fields.get('cpu family', '?')}-m{fields.get('model', '?')}"


def microarchitecture_variant(path: str, cpu: str) -> str:
    """The recording made on this CPU model, instruction set and micro-architecture."""
    return cpu_variant(path, f"{cpu} {isa()} {microarchitecture()}")


def cpu_variant(path: str, cpu: str) -> str:
    """``golden_f32.npz`` -> ``golden_f32.<cpu-model-slug>.npz``: the recording for another CPU model."""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"
    base = os.path.basename(path).split(".")[0]
    return os.path.join(os.path.dirname(path), f"{base}.{slug}.npz")


def _first_difference(want: dict, got: dict, rtol) -> str | None:
    for arr in sorted(want):
        msg = compare(want[arr], got[arr], rtol)
        if msg is not None:
            return f"first mismatching array {arr!r}: {msg}"
    return None


def check(path, names_arg, jobs=1):
    meta, recorded = load(path)
    env = environment()
    if meta["x64"] != X64:
        sys.exit(
            f"{path} was recorded with x64={'on' if meta['x64'] else 'off'} but this run has x64="
            f"{'on' if X64 else 'off'}: set JAX_ENABLE_X64{'=1' if meta['x64'] else ' off (unset it)'}"
        )
    isa_alt = cpu_variant(path, f"{env.get('cpu', '')} {isa()}")
    if meta.get("cpu") == env.get("cpu") and os.path.basename(path).count(".") == 1 and os.path.exists(isa_alt):
        # One CPU model name, two instruction sets (an AMD EPYC with and without AVX-512 differ in
        # the last bits of 21 of 24 cases): a recording made with this one's is used when it exists.
        print(f"NOTE: using {isa_alt}, recorded on this CPU model with {isa()}")
        return check(isa_alt, names_arg, jobs)
    names = _select(names_arg, recorded)
    same = meta["versions"] == env["versions"] and meta["backend"] == env["backend"]
    same_cpu = meta.get("cpu") == env.get("cpu")
    rtol = None
    print(f"checking {len(names)} cases ({'float64' if X64 else 'float32'}) against {path}")
    if not same:
        rtol = 1e-10 if X64 else 1e-4
        print(
            f"NOTE: recorded with {meta['versions']} on {meta['backend']}, running {env['versions']} on "
            f"{env['backend']}: comparing with rtol {rtol:g} (scaled atol) instead of bit for bit"
        )
    if not same_cpu:
        # Another instruction set changes the last bits, and a noisy fit or a line search's stopping
        # step amplifies them to O(1) (measured: AMD EPYC vs Intel Xeon): use a recording made
        # on this CPU model when there is one.
        alt = cpu_variant(path, env.get("cpu", ""))
        if alt != path and os.path.exists(alt):
            print(f"NOTE: {path} was recorded on CPU {meta.get('cpu')!r}; using {alt}, recorded on this one")
            return check(alt, names_arg, jobs)
        print(f"NO RECORDING: {path} was recorded on CPU {meta.get('cpu')!r}, this is {env.get('cpu')!r}, and "
              f"{alt} does not exist; record it with: python tests/golden_cases.py record {alt}")
        return NO_RECORDING
    # A recording made on this very micro-architecture is accepted as well: a case passes when it
    # equals either recording bit for bit (a regression would have to reproduce another
    # machine's last bits to pass).
    also = None
    fine = microarchitecture_variant(path, env.get("cpu", ""))
    if fine != path and os.path.exists(fine):
        fine_meta, also = load(fine)
        if fine_meta["versions"] != env["versions"] or fine_meta["x64"] != X64:
            also = None
        else:
            print(f"NOTE: {fine}, recorded on this micro-architecture ({microarchitecture()}), is accepted too")
    t0 = time.perf_counter()
    if meta.get("xla_flags") != env["xla_flags"]:
        print(f"NOTE: recorded with XLA_FLAGS={meta.get('xla_flags')!r}, running with {env['xla_flags']!r} "
              "(compiler flags can change the last bits)")
    results, errors, times = run_cases(names, jobs)
    elapsed = time.perf_counter() - t0
    failures = []
    for name in names:
        if name in errors:
            failures.append(f"case {name}: raised\n{errors[name]}")
            continue
        want, got = recorded[name], results[name]
        missing, added = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or added:
            failures.append(f"case {name}: arrays missing {missing}, unexpected {added}")
            continue
        msg = _first_difference(want, got, rtol)
        if msg is not None and also is not None and name in also and set(also[name]) == set(got):
            if _first_difference(also[name], got, rtol) is None:
                print(f"  {name}: equals {os.path.basename(fine)}")
                msg = None
        if msg is not None:
            failures.append(f"case {name}: {msg}")
    total = f"{elapsed:.1f}s for the cases, {sum(times.values()):.1f}s summed over them, jobs={jobs}"
    if failures:
        print(f"\n{len(failures)} of {len(names)} cases differ from {path}:")
        for msg in failures:
            print("  " + msg)
        if meta.get("cpu") != env.get("cpu"):
            print(f"(recorded on CPU {meta.get('cpu')!r}, running on {env.get('cpu')!r}: bit-exact results are "
                  "only expected on the same kind of CPU)")
        here = microarchitecture()
        if rtol is None and also is None and meta.get("microarchitecture") != here:
            # Neither recording was made on this micro-architecture: differences in the last bits
            # (amplified by a fit) cannot be told from a regression here. Say so and skip.
            print(f"NO RECORDING for this micro-architecture ({here}; {len(failures)} case(s) differ from {path}, recorded on "
                  f"{meta.get('microarchitecture', 'an unrecorded one')}): record one at a known-good commit with: "
                  f"python tests/golden_cases.py record {microarchitecture_variant(path, env.get('cpu', ''))}")
            return NO_RECORDING
        print(f"FAILED ({total})")
        return 1
    print(f"OK: {len(names)} cases {'bit-identical' if rtol is None else f'within rtol {rtol:g}'} "
          f"({total})")
    return 0


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("record", "check"):
        p = sub.add_parser(cmd)
        p.add_argument("file")
        p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
        p.add_argument("--jobs", type=int, default=int(os.environ.get("GOLDEN_JOBS", "1")),
                       help="worker processes (default: $GOLDEN_JOBS or 1)")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, fn in CASES.items():
            doc = " ".join(fn.__doc__.split("\n\n")[0].split()) if fn.__doc__ else ""
            print(name + (f": {doc}" if doc else ""))
        return 0
    if args.command == "record":
        record(args.file, _select(args.cases, CASES), args.jobs)
        return 0
    return check(args.file, args.cases, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
