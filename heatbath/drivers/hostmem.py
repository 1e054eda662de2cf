"""Host memory without NumPy's transparent-huge-page advice during heatbath's calls.

NumPy advises the kernel to back every allocation of 4 MiB or more with huge pages
(``madvise(MADV_HUGEPAGE)``). Where the kernel defragments memory for such pages on demand
(Linux's default ``defrag=madvise``) the first touch of a fresh buffer can stall on memory
compaction. On the 2-core test machine, filling a fresh 336 MB buffer (1,000 draws of an
84k-weight network) took 2.3 s with the advice and 0.17 s without, and the end-of-run R-hat
and ESS of 2,000 coordinates took 0.97 s on their first call in a process against 0.22 s
later (their work arrays). heatbath's host arrays (draws, diagnostics' work arrays) are written
once and read a few times, so huge pages buy them nothing: the draws' buffer
(``moments.empty_host``) and the end-of-run checks (``selfcheck.run_checks``, through
:func:`without_huge_pages`) are made under :func:`no_huge_pages`. (Not the whole of
``hb.sample``: a wrapper would shift the frame its warnings point at.)

The setting is process-wide: while a call runs, NumPy allocations by other threads go
without the advice too (which costs them nothing but speed); nested and concurrent calls
are counted, and the last one out restores the setting it found.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

__all__ = ["no_huge_pages", "empty", "without_huge_pages"]

_LOCK = threading.Lock()
_DEPTH = 0
_BEFORE = None


def _setter():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # NumPy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return None
    return _set_madvise_hugepage


@contextlib.contextmanager
def no_huge_pages():
    """NumPy's huge-page advice off inside the block (counted: the outermost block restores)."""
    global _DEPTH, _BEFORE
    setter = _setter()
    if setter is None:
        yield
        return
    with _LOCK:
        if _DEPTH == 0:
            _BEFORE = setter(False)
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                setter(_BEFORE)


def empty(shape, dtype) -> np.ndarray:
    """``np.empty`` without the huge-page advice."""
    with no_huge_pages():
        return np.empty(shape, dtype)


def without_huge_pages(fn):
    """``fn`` run under :func:`no_huge_pages` (a decorator for the public calls)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with no_huge_pages():
            return fn(*args, **kwargs)

    return wrapped
