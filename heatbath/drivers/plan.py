"""The plan of a run: its segments (warmup chunks, sampling chunks), sized by memory and time,
and the Ctrl-C handling that stops a run between chunks.

A compiled chunk cannot be interrupted, so a chunk is also the unit of checkpoints and of
Ctrl-C: by default a long run (more than ``4 * CALIBRATION_STEPS`` steps) times its first
chunk of ``CALIBRATION_STEPS`` steps and sizes the others to take about ``CHUNK_SECONDS``
(powers of two, so that repeated calls reuse the compiled chunks), within the memory budget
of the draws kept; warmup, which records nothing, is chunked by its own length. The plan is
recorded in the checkpoint settings, and a resume follows the recorded plan.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["CHUNK_SECONDS", "CALIBRATION_STEPS", "chunk_lengths", "segments", "sized_by_time", "Interrupt",
           "recorded_plan"]

CHUNK_SECONDS = 10.0  # wall time of an automatically sized chunk (the unit of checkpoints and of Ctrl-C)
CALIBRATION_STEPS = 2048  # steps of the first, timed chunk of a long run


def chunk_lengths(total: int, size: int):
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


def segments(cfg, chunk_size: int, warmup_chunk: Optional[int] = None, first=None):
    """(length, steps per draw, is a sampling chunk) of every segment: an optional ``first``
    (calibration) segment, then warmup chunks of ``warmup_chunk`` steps (default
    ``chunk_size * thinning``), then sampling chunks of ``chunk_size`` draws."""
    segs, warm, num = [], cfg.num_warmup, cfg.num_draws
    if first is not None:
        segs.append(tuple(first))
        if first[2]:
            num -= first[0]
        else:
            warm -= first[0]
    wchunk = max(1, warmup_chunk or chunk_size * cfg.thinning)
    segs += [(n, 1, False) for n in chunk_lengths(warm, wchunk)] if warm else []
    return segs + [(n, cfg.thinning, True) for n in chunk_lengths(num, chunk_size)]


def _pow2(x: float) -> int:
    """The largest power of two <= x (>= 1): chunk lengths from timings, few distinct shapes."""
    return 1 << max(0, int(np.floor(np.log2(max(x, 1.0)))))


def sized_by_time(cfg, first, seconds: float, mem_chunk: int):
    """(draws per chunk, warmup steps per chunk) so that a chunk takes about CHUNK_SECONDS, from
    the wall time of the ``first`` segment; the rest of a phase that fits in two chunks' time
    runs as one chunk. A run over several processes uses process 0's time on every process (the
    processes must run the same chunks)."""
    from heatbath.drivers.placement import spans_processes

    if spans_processes(getattr(cfg, "shard", None), getattr(cfg, "devices", None)):
        from jax.experimental import multihost_utils

        seconds = float(multihost_utils.broadcast_one_to_all(np.float64(seconds)))
    rate = first[0] * first[1] / max(seconds, 1e-9)  # steps per second
    warm_left = cfg.num_warmup - (0 if first[2] else first[0])
    draws_left = cfg.num_draws - (first[0] if first[2] else 0)
    budget = CHUNK_SECONDS * rate
    warm = warm_left if warm_left <= 2 * budget else _pow2(budget)
    per_draw = budget / cfg.thinning
    draws = draws_left if draws_left <= 2 * per_draw else _pow2(per_draw)
    return max(1, min(draws, mem_chunk)), max(1, warm)


class Interrupt:
    """Ctrl-C (SIGINT) during a run sets a flag instead of raising: the loop stops after the
    chunk in progress (a compiled chunk cannot be interrupted) and returns what is done. A
    second Ctrl-C raises KeyboardInterrupt at once. Only in the main thread."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                if self.requested:
                    raise KeyboardInterrupt
                self.requested = True

            self.previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def recorded_plan(settings: dict, path: str):
    """(chunk_size, warmup_chunk, first segment) recorded in a checkpoint's settings, checked:
    a malformed value is a ``ValueError`` naming the field (the plan decides which files hold
    which draws, so it is validated like the rest of meta.json)."""
    chunk_size, warmup_chunk, first = settings.get("chunk_size"), settings.get("warmup_chunk"), settings.get(
        "first_segment")
    if not _count(chunk_size):
        raise ValueError(f"checkpoint {path}: field 'settings.chunk_size' is not a positive integer: {chunk_size!r}")
    if warmup_chunk is not None and not _count(warmup_chunk):
        raise ValueError(f"checkpoint {path}: field 'settings.warmup_chunk' is not a positive integer or null: "
                         f"{warmup_chunk!r}")
    if first is not None:
        ok = (isinstance(first, list) and len(first) == 3 and _count(first[0]) and _count(first[1])
              and isinstance(first[2], bool))
        if not ok:
            raise ValueError(f"checkpoint {path}: field 'settings.first_segment' is not null or [length, steps, "
                             f"is_draws]: {str(first)[:100]}")
        first = tuple(first)
    return chunk_size, warmup_chunk, first
