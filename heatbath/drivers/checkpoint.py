"""Checkpoints: plain arrays (npz) with JSON metadata, written atomically, never pickled.

A checkpoint is a directory:

    meta.json            format, version, the run's settings, what is done, and the SHA-256 of
                         every array file; written last, by rename: it is the commit point
    state_<k>.npz        the loop's carry after k segments (sampler states, estimator states,
                         PRNG keys as raw key data), plus anything the run must not recompute
    extra.npz            what is written once (e.g. the control-variate centre)
    draws_<j>.npz        the draws and stats of sampling chunk j
    .lock                held (``flock``) by the run writing the directory, for its duration

A run spread over several processes (``jax.distributed``; ``Checkpoint(..., processes=True)``)
is written by process 0 alone: every process holds the same state and draws (gathered after
each chunk), so one copy is the whole checkpoint, with one commit point. (A directory per
process would commit each process separately: a run killed between two processes' commits
would leave them at different segments, and a resume would start them out of step.) At every
commit the other processes wait for process 0's outcome (a broadcast from it): a failed write
raises :class:`CheckpointWriteError` on every process, and when ``hb.sample`` returns the commit
is on disk. On resume every process reads the directory, so it must be on a filesystem they
share (the processes check that they see the same commit before anything compiles).

Every file is written to a temporary name (``.tmp-*``) and renamed, then ``meta.json`` is
replaced the same way, so a run killed at any instant (SIGKILL included) leaves the previous
consistent checkpoint; the temporary files of a killed write are removed by the next run that
opens the directory.

Opening a checkpoint (:meth:`Checkpoint.open`) creates the directory, checks that a file can
be written there (a read-only, deleted or full directory fails here, before anything is
compiled, with :class:`CheckpointWriteError`) and takes the lock: a second run writing the same
directory, in this process or another, is refused with :class:`CheckpointLockedError`. The
kernel releases the lock of a killed process. A commit that fails mid-run (disk full, the
directory deleted) raises :class:`CheckpointWriteError`; the loop attaches the draws made so
far to it (``err.partial``) and the last committed checkpoint stays intact.

Loading trusts nothing in ``meta.json``: only the file names heatbath writes are accepted
(``state_<segments_done>.npz``, ``draws_<segment>.npz``, ``extra.npz``: never a path, ``..``, a
subdirectory or a symbolic link), so nothing outside the directory is read or deleted; the
fields' types and their consistency (the state file against ``segments_done``, the draws
files against the segments done) are checked, every malformed field is a ``ValueError`` that
names it. Every file's digest is checked, then every array's shape and dtype, read from its
``.npy`` header, against what this run expects, before any array is decompressed. (The
digests detect corruption and edits of the arrays; they are not a signature against someone
who rewrites meta.json too.) Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import warnings
import weakref
from typing import Any, Callable, Optional

import jax
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

from heatbath.drivers.checkpoint_io import (  # noqa: F401 - FORMAT, VERSION, save_tree re-exported
    EXTRA,
    FORMAT,
    MAX_META_BYTES,
    META,
    VERSION,
    CheckpointLockedError,
    CheckpointWriteError,
    check_name,
    fsync_dir,
    load_tree,
    open_regular,
    reason,
    remove_temporaries,
    save_tree,
    take_lock,
    write_probe,
)
from heatbath.drivers import checkpoint_io as _io
from heatbath.drivers.checkpoint_meta import validate_meta

__all__ = ["Checkpoint", "CheckpointWriteError", "CheckpointLockedError", "hold", "save_tree", "load_tree",
           "FORMAT", "VERSION"]

class Checkpoint:
    """The checkpoint directory of one run (see the module docstring).

    :meth:`open` takes the directory's lock (and checks it can be written); :meth:`close`
    releases it. Use it as a context manager, or :func:`hold`, so that the lock is released
    however the run ends; a Checkpoint that is garbage-collected releases it too.
    """

    def __init__(self, path: str, settings: dict, processes: bool = False):
        self.path = os.fspath(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.meta = None
        self._lock_fd = None
        self._release = None
        self._dir_id = None
        # Several processes (see the module docstring): process 0 writes, the others only read.
        self.processes = bool(processes)
        self.writer = not self.processes or jax.process_index() == 0

    # -- the directory and its lock --------------------------------------------------------
    def open(self, create: bool = True) -> "Checkpoint":
        """Create the directory (``create``), check a file can be written there, take its lock and
        remove the temporary files of a write that was killed. Idempotent."""
        if self._lock_fd is not None or not self.writer:
            return self
        if create:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as err:
                raise CheckpointWriteError(
                    f"cannot create the checkpoint directory {self.path}: {reason(err)} ({err.strerror or err})",
                    err.errno,
                ) from err
        if not os.path.isdir(self.path):
            raise ValueError(f"the checkpoint path {self.path} is not a directory")
        write_probe(self.path)
        fd = take_lock(self.path)
        self._lock_fd = fd
        self._release = weakref.finalize(self, os.close, fd)
        try:
            st = os.stat(self.path)
            self._dir_id = (st.st_dev, st.st_ino)
            remove_temporaries(self.path)
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        """Release the directory's lock (idempotent)."""
        if self._release is not None:
            self._release()  # closes the lock's fd (which releases the flock) once
        self._release = self._lock_fd = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def committed(self) -> bool:
        """Whether meta.json exists (something was committed here)."""
        return os.path.lexists(os.path.join(self.path, META))

    def _check_directory(self):
        """Refuse to commit into a directory that was deleted or replaced during the run."""
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise CheckpointWriteError(
                f"the checkpoint directory {self.path} was deleted during the run ({err.strerror or err}); nothing "
                "more can be committed", err.errno) from err
        lost = self._lock_fd is not None and os.fstat(self._lock_fd).st_nlink == 0
        if (st.st_dev, st.st_ino) != self._dir_id or lost:
            raise CheckpointWriteError(
                f"the checkpoint directory {self.path} was deleted or replaced during the run; nothing more can "
                "be committed there", _errno.ENOENT)

    @contextlib.contextmanager
    def _closing_on_error(self):
        try:
            yield
        except BaseException:
            self.close()
            raise

    # -- writing ---------------------------------------------------------------------------
    def commit(self, segments_done: int, state: Any, new_draws: list, previous: dict | None, extra: Any = None) -> dict:
        """Write the state after ``segments_done`` segments and the new draw chunks, then meta.json.

        ``extra`` (e.g. the control-variate centre) is written once, on the first commit. An
        ``OSError`` (disk full, directory deleted or read-only) becomes a :class:`CheckpointWriteError`;
        the previous commit stays intact. Several processes: process 0 writes, then broadcasts
        whether it committed; every process returns or raises with it.
        """
        if not self.processes:
            return self._write(segments_done, state, new_draws, previous, extra)
        from jax.experimental import multihost_utils

        failed, meta = None, {"segments_done": segments_done}
        if self.writer:
            try:
                meta = self._write(segments_done, state, new_draws, previous, extra)
            except BaseException as err:  # the others are waiting for the broadcast: send it, then raise
                failed = err
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(failed is None)))
        if failed is not None:
            raise failed
        if not ok:
            raise CheckpointWriteError(
                f"process 0 could not commit the checkpoint at {self.path} (after {segments_done} segments): its "
                "error says why; the last commit is intact")
        self.meta = meta
        return meta

    def _write(self, segments_done, state, new_draws, previous, extra):
        if self._lock_fd is None:
            self.open(create=True)
        try:
            self._check_directory()
            extra_desc = previous.get("extra") if previous else None
            if extra_desc is None and extra is not None:
                extra_desc = save_tree(os.path.join(self.path, EXTRA), extra)
            state_desc = save_tree(os.path.join(self.path, f"state_{segments_done:06d}.npz"), state)
            draws = list(previous["draws"]) if previous else []
            for index, tree in new_draws:
                desc = save_tree(os.path.join(self.path, f"draws_{index:06d}.npz"), tree)
                desc["segment"] = int(index)
                draws.append(desc)
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "settings": self.settings,
                "segments_done": segments_done,
                "state": state_desc,
                "draws": draws,
                "extra": extra_desc,
            }
            _io.atomic_write(os.path.join(self.path, META), lambda f: f.write(json.dumps(meta, indent=1).encode()))
            fsync_dir(self.path)
        except CheckpointWriteError:
            raise
        except OSError as err:
            done = previous["segments_done"] if previous else 0
            kept = f"the last commit ({done} segments done) is intact" if done else "nothing had been committed yet"
            raise CheckpointWriteError(
                f"writing the checkpoint at {self.path} (after {segments_done} segments) failed: {reason(err)} "
                f"({err.strerror or err}); {kept}", err.errno) from err
        old = previous["state"]["file"] if previous else None
        if old and old != state_desc["file"]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, check_name(old, "state.file")))
        self.meta = meta
        return meta

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def read_meta(path: str) -> dict:
        """The parsed and checked meta.json of the checkpoint at ``path`` (a ``ValueError`` if there is none)."""
        meta_path = os.path.join(os.fspath(path), META)
        with open_regular(meta_path, f"checkpoint {meta_path}", f"no checkpoint at {path} (meta.json missing)") as f:
            try:
                raw = f.read(MAX_META_BYTES + 1)
            except OSError as err:
                raise ValueError(f"checkpoint {meta_path} cannot be read: {err}") from err
        if len(raw) > MAX_META_BYTES:
            raise ValueError(f"checkpoint {meta_path} is larger than {MAX_META_BYTES >> 20} MiB: refused")
        try:
            meta = json.loads(raw.decode())
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"checkpoint {meta_path} is corrupted: {type(err).__name__}: {err}") from err
        return validate_meta(meta, meta_path)

    def has_extra(self) -> bool:
        with self._closing_on_error():
            return bool(self.read_meta(self.path).get("extra"))

    def load_extra(self, like: Any) -> Any:
        with self._closing_on_error():
            return load_tree(self.path, self.read_meta(self.path)["extra"], like, field="extra")

    def check_settings(self, meta: dict):
        theirs = dict(meta["settings"])
        ours = self.settings
        if "jax" in ours and theirs.get("jax") != ours["jax"]:
            # A jaxpr printed by another JAX version may differ for the same model: the model
            # digest is not compared, and the draws will equal the uninterrupted run's only to
            # floating-point tolerance.
            warnings.warn(
                f"the checkpoint at {self.path} was written with JAX {theirs.get('jax')}, this run uses "
                f"{ours['jax']}: the model cannot be verified to be the same, and the resumed draws equal "
                "the uninterrupted run's only to floating-point tolerance",
                UserWarning,
                stacklevel=4,
            )
            ours = {k: v for k, v in ours.items() if k not in ("jax", "model")}
            theirs = {k: v for k, v in theirs.items() if k not in ("jax", "model")}
        keys = list(ours) + [k for k in theirs if k not in ours]
        diff = {k: (theirs.get(k), ours.get(k)) for k in keys if theirs.get(k) != ours.get(k)}
        if diff:
            detail = "; ".join(f"{k}: checkpoint {str(a)[:200]!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"the checkpoint at {self.path} was written by a different run ({detail})")

    def restore(self, like: Any, sampling: list, draws_like: Callable[[int], Any], add: Callable[[Any], None]):
        """Resume: check meta.json against this run and load its state and draws.

        ``like``: the run's freshly built state (shapes, dtypes, shardings); ``sampling``: for
        each segment of the run, its length if it records draws, else None; ``draws_like(length)``:
        the run's tree of one sampling chunk; ``add(tree)`` receives every loaded chunk in order.
        Returns (state, segments done, meta). Any failure releases the lock.
        """
        with self._closing_on_error():
            meta = self.read_meta(self.path)
            self.check_settings(meta)
            done = meta["segments_done"]
            if done > len(sampling):
                raise ValueError(f"the checkpoint has {done} segments done, this run has only {len(sampling)}")
            listed = [d["segment"] for d in meta["draws"]]
            expected = [j for j in range(done) if sampling[j] is not None]
            if listed != expected:
                raise ValueError(
                    f"checkpoint {self.path}: field 'draws' lists the draws of segments {listed[:20]} where "
                    f"{done} segments done hold draws of segments {expected[:20]}: it does not match segments_done"
                )
            state = load_tree(self.path, meta["state"], like, field="state")
            for i, desc in enumerate(meta["draws"]):
                add(load_tree(self.path, desc, draws_like(sampling[desc["segment"]]), field=f"draws[{i}]"))
            return state, done, meta


@contextlib.contextmanager
def hold(ckpt: Optional[Checkpoint], partial: Optional[Callable[[], tuple]] = None):
    """Hold ``ckpt``'s lock until the block ends, however it ends (``ckpt`` may be None).

    ``partial()`` returns (draws, stats) made so far, with a leading draw axis; it is attached
    to a :class:`CheckpointWriteError` raised in the block.
    """
    if ckpt is None:
        yield None
        return
    try:
        yield ckpt
    except CheckpointWriteError as err:
        if partial is not None and err.partial is None:
            draws, stats = partial()
            stats = stats._asdict() if hasattr(stats, "_asdict") else stats
            leaves = jax.tree.leaves((draws, stats))
            num = int(np.shape(leaves[0])[0]) if leaves else 0
            err.attach({"draws": draws, "stats": stats, "num_draws": num})
        raise
    finally:
        ckpt.close()
