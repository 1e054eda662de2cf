"""A watchdog that says so when a call hangs with no CPU use (jaxlib's thread-pool deadlock).

With jaxlib 0.10.2 on a machine whose XLA CPU thread pool has two threads, a compiled program
that runs two batched LAPACK calls at once (the triangular solves of a multivariate normal under
heatbath's ``vmap`` over chains or points) can wait forever: each call waits for its batch's
tasks on the same pool, with no thread left to run them (benchmarks/RESULTS.md, 2026-12-05).
The process then sits at 0% CPU and prints nothing, the worst way for a run to fail.

While ``hb.sample`` runs its chains and its end-of-run checks on the CPU backend, a daemon thread
reads the process's CPU time (all threads: XLA's pool included) every few seconds. When it has
grown by less than ``IDLE_FRACTION`` of the wall time over ``window`` seconds (default
:data:`WINDOW`; ``$HEATBATH_STALL_SECONDS``, 0 turns it off), it writes one message to stderr
naming the likely cause and the workaround. It cannot stop the call (the main thread is blocked
inside XLA); the user can. Not with an accelerator backend (the host waits on the device), nor
for runs across processes (a process may wait for another's compile at a collective).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

__all__ = ["watch", "stalled", "applies", "WINDOW", "IDLE_FRACTION"]

WINDOW = 90.0  # seconds without CPU use before the message
IDLE_FRACTION = 0.02  # CPU seconds per wall second below which the process counts as idle

MESSAGE = (
    "heatbath: {what}: almost no CPU used for {secs:.0f} s while it should be computing. This "
    "looks like a known hang of jaxlib's CPU thread pool (two batched LAPACK calls, e.g. the "
    "triangular solves of a multivariate normal or an LKJ model, each waiting for tasks queued on "
    "the same small pool; see the README's 'Errors' section). It will not finish: stop the process "
    "(Ctrl-C may not get through). The same run in a fresh Python process has finished where it "
    "hung after other runs in one process. (HEATBATH_STALL_SECONDS=0 turns this watchdog off.)\n"
)

_lock = threading.Lock()
_wake = threading.Event()
_active = {}  # token -> (what, window)
_thread = None


def _window() -> float:
    try:
        return float(os.environ.get("HEATBATH_STALL_SECONDS", WINDOW))
    except ValueError:
        return WINDOW


def stalled(samples, window: float, idle_fraction: float = IDLE_FRACTION) -> bool:
    """Whether ``samples`` ((wall, cpu) seconds, oldest first) span ``window`` seconds with the CPU
    time grown by less than ``idle_fraction`` of the wall time over that span."""
    if len(samples) < 2:
        return False
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    return t1 - t0 >= window and (c1 - c0) < idle_fraction * (t1 - t0)


def _loop():
    samples, warned = {}, set()  # per watched call: (wall, cpu) samples, and whether it was reported
    while True:
        with _lock:
            entries = dict(_active)
        for token in list(samples):
            if token not in entries:
                del samples[token]
        if not entries:
            _wake.wait(0.5)
            _wake.clear()
            continue
        now, cpu = time.monotonic(), time.process_time()
        for token, (what, window) in entries.items():
            seq = samples.setdefault(token, [])
            seq.append((now, cpu))
            while len(seq) > 2 and now - seq[1][0] >= window:
                seq.pop(0)
            if token not in warned and stalled(seq, window):
                warned.add(token)
                sys.stderr.write(MESSAGE.format(what=what, secs=now - seq[0][0]))
                sys.stderr.flush()
        # (a new call wakes the loop at once: its own window sets the next poll)
        _wake.wait(max(0.05, min([5.0] + [w / 10 for _, w in entries.values()])))
        _wake.clear()


def _start():
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_loop, name="heatbath-stall-watch", daemon=True)
        _thread.start()


_counter = iter(range(1 << 62))


@contextlib.contextmanager
def watch(what: str = "hb.sample", window: float | None = None, enabled: bool = True):
    """Watch the block for a hang with no CPU use (see the module docstring)."""
    window = _window() if window is None else window
    if not enabled or window <= 0:
        yield
        return
    with _lock:
        token = next(_counter)
        _active[token] = (what, window)
        _start()
    _wake.set()
    try:
        yield
    finally:
        with _lock:
            _active.pop(token, None)


def applies() -> bool:
    """Whether a run should be watched: the CPU backend, one process."""
    import jax

    return jax.process_count() == 1 and jax.default_backend() == "cpu"
