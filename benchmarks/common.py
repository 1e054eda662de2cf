"""Shared timing helpers for the benchmarks (import them from any ``benchmarks/bench_*.py``).

The machine is shared and noisy, so every benchmark here

- compiles every contender first (``warmup``), then
- runs the contenders *interleaved* (round-robin, in a shuffled order each round) for several
  repeats, so a burst of load hits all of them alike, and
- reports the *minimum* over the repeats (the least disturbed run) with the spread
  (median / min - 1, max / min - 1) so a reader can judge the noise.

Ratios are taken between minima measured side by side in one process. Every run also
records the process CPU time (``Timing.best_cpu``): on an oversubscribed machine it is the
steadier measure of the work, while the wall time is what a user waits for.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import jax

__all__ = [
    "block",
    "time_call",
    "time_call_cpu",
    "interleaved",
    "Timing",
    "summarize",
    "paired_ratio",
    "machine_info",
    "load_average",
    "markdown_table",
]


def block(out):
    """Wait for every array in ``out`` (any pytree) to be computed; return ``out``."""
    return jax.block_until_ready(out)


def time_call(fn: Callable[[], object]) -> float:
    """Seconds taken by ``fn()`` including waiting for its device arrays."""
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def time_call_cpu(fn: Callable[[], object]):
    """(wall seconds, CPU seconds of this process) taken by ``fn()``.

    On a shared, oversubscribed machine the wall time grows when the process waits for a
    core; the process CPU time (all threads) does not, so it is the steadier figure of the
    work done (it can exceed the wall time when XLA uses several threads).
    """
    c0, t0 = time.process_time(), time.perf_counter()
    block(fn())
    return time.perf_counter() - t0, time.process_time() - c0


class Timing:
    """The repeats of one contender (seconds) and their summary."""

    def __init__(self, name: str, times: List[float], extra: Optional[Dict[str, List[float]]] = None):
        self.name = name
        self.times = list(times)
        self.extra = extra or {}  # other per-repeat quantities (e.g. host-reported run times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best_cpu(self) -> float:
        """The least process CPU time over the repeats (NaN if not measured)."""
        return min(self.extra.get("cpu", [float("nan")]))

    @property
    def spread(self) -> str:
        """'+a% / +b%': median and max over the min."""
        b = self.best
        return f"+{100 * (self.median / b - 1):.0f}% / +{100 * (max(self.times) / b - 1):.0f}%"

    def __repr__(self) -> str:
        return f"Timing({self.name}: min {self.best:.4f}s, median {self.median:.4f}s, n={len(self.times)})"


def interleaved(
    contenders: Dict[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 1,
    measure: Optional[Dict[str, Callable[[], Dict[str, float]]]] = None,
    verbose: bool = True,
) -> Dict[str, Timing]:
    """Time each contender ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    ``contenders``: name -> zero-argument callable (its result is blocked on).
    ``measure``: optional name -> callable returning a dict of extra numbers per run; when
    given for a contender it replaces the plain call: it must run the contender once and
    return ``{"time": seconds, ...}`` (used to read host-side timings such as
    ``Result.wall_time``).
    Each round runs the contenders in a freshly shuffled order (fixed seed), so none is
    always first and none always follows the same neighbour (whose cache footprint could
    help or hurt it).
    """
    import random

    shuffle = random.Random(0).shuffle
    measure = measure or {}
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            block(contenders[name]())
    times = {n: [] for n in names}
    extra: Dict[str, Dict[str, List[float]]] = {n: {} for n in names}
    for r in range(repeats):
        order = list(names)
        shuffle(order)
        for name in order:
            c0 = time.process_time()
            if name in measure:
                out = measure[name]()
                times[name].append(out.pop("time"))
                for k, v in out.items():
                    extra[name].setdefault(k, []).append(v)
            else:
                times[name].append(time_call(contenders[name]))
            extra[name].setdefault("cpu", []).append(time.process_time() - c0)
        if verbose:
            row = "  ".join(f"{n}={times[n][-1]:.3f}" for n in names)
            print(f"  repeat {r + 1}/{repeats} (load {load_average():.2f}): {row}", flush=True)
    return {n: Timing(n, times[n], extra[n]) for n in names}


def paired_ratio(timings: Dict[str, Timing], name: str, ref: str):
    """Median and quartiles of time(name) / time(ref) taken round by round.

    The contenders of one round run back to back, so a burst of load tends to hit both
    members of a pair; the median of the per-round ratios is then steadier than the ratio of
    the two minima when the machine is busy. Returns (median, q25, q75).
    """
    import numpy as np

    r = np.asarray(timings[name].times) / np.asarray(timings[ref].times)
    q25, med, q75 = np.percentile(r, [25, 50, 75])
    return float(med), float(q25), float(q75)


def summarize(timings: Dict[str, Timing]) -> Dict[str, float]:
    """name -> min seconds."""
    return {n: t.best for n, t in timings.items()}


def load_average() -> float:
    """The 1-minute load average (NaN where the OS does not tell)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def machine_info() -> Dict[str, str]:
    """Date, host, CPU count, JAX version and backend, load average: the table's caption."""
    import numpy as np

    dev = jax.devices()[0]
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        load = "n/a"
    info = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "cpus": str(os.cpu_count()),
        "jax": jax.__version__,
        "backend": f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s))",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load average (1, 5, 15 min)": load,
    }
    try:  # the model name of the CPU, where Linux tells it
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["machine"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def markdown_table(header: List[str], rows: List[List[object]]) -> str:
    """A GitHub markdown table."""
    def cell(x):
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# A deterministic cost measure: HLO operations executed per step of a compiled scan
# ----------------------------------------------------------------------------------------
_FREE_OPS = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def _parse_hlo(text: str):
    import re

    comps, cur, entry = {}, None, None
    for line in text.split("\n"):
        m = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if line.startswith("}"):
            cur = None
            continue
        if cur is not None and "=" in line:
            comps[cur].append(line)
    return comps, entry


def _opcode(line: str) -> str:
    import re

    m = re.search(r"\s([a-z][a-z0-9\-_]*)\(", line.split("=", 1)[1])
    return m.group(1) if m else "?"


def _count_ops(comps, name, memo):
    import re

    if name in memo:
        return memo[name]
    n = 0
    for line in comps[name]:
        op = _opcode(line)
        if op in _FREE_OPS:
            continue
        if op == "while":
            body = re.search(r"body=%?([\w.\-]+)", line).group(1)
            cond = re.search(r"condition=%?([\w.\-]+)", line).group(1)
            trip = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
            n += (int(trip.group(1)) if trip else 1) * (_count_ops(comps, body, memo) + _count_ops(comps, cond, memo))
        elif op == "call" and "xla_cpu_small_call" in line:
            n += 1  # XLA:CPU compiles a small call (e.g. a short threefry loop) into one kernel
        elif op in ("call", "conditional"):
            for c in re.findall(r"(?:to_apply|calls|branch_computations)=\{?%?([\w.\-]+)", line):
                n += _count_ops(comps, c, memo)
        else:
            n += 1  # one kernel (a fusion, a dot, a copy, ...) run by the runtime
    memo[name] = n
    return n


def ops_per_step(compiled) -> Optional[int]:
    """HLO operations (fusions, dots, copies, ...) run per iteration of the compiled scan.

    ``compiled``: a ``jax.stages.Compiled`` whose entry computation holds one outer
    ``while`` loop (a ``lax.scan``; under ``vmap`` too). Nested loops (XLA:CPU rolls the
    threefry hash into a 5-trip loop) count with their trip counts. For small models the
    time per step on CPU is mostly the runtime launching these operations, so this count is a
    load-independent proxy for the cost of a step. None if no loop is found.
    """
    import re

    comps, entry = _parse_hlo(compiled.as_text())
    loops = [line for line in comps.get(entry, []) if _opcode(line) == "while"]
    if not loops:
        return None
    # The outermost scan: the while loop with the largest trip count.
    def trip(line):
        m = re.search(r'known_trip_count":\{"n":"(\d+)"', line)
        return int(m.group(1)) if m else 0

    line = max(loops, key=trip)
    body = re.search(r"body=%?([\w.\-]+)", line).group(1)
    return _count_ops(comps, body, {})
