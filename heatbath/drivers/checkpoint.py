"""Checkpoints: plain arrays (npz) with JSON metadata, written atomically, never pickled.

A checkpoint is a directory:

    meta.json            format, version, the run's settings, what is done, and the SHA-256 of
                         every array file; written last, by rename: it is the commit point
    state_<k>.npz        the loop's carry after k segments (sampler states, estimator states,
                         PRNG keys as raw key data), plus anything the run must not recompute
    extra.npz            what is written once (e.g. the control-variate centre)
    draws_<j>.npz        the draws and stats of sampling chunk j
    .lock                held (``flock``) by the run writing the directory, for its duration

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
import gc
import hashlib
import json
import os
import re
import stat
import tempfile
import warnings
import weakref
import zipfile
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

__all__ = ["Checkpoint", "CheckpointWriteError", "CheckpointLockedError", "hold", "save_tree", "load_tree",
           "FORMAT", "VERSION"]

FORMAT = "heatbath-checkpoint"
VERSION = 1
META = "meta.json"
LOCK = ".lock"
EXTRA = "extra.npz"
_TEMP_PREFIX = ".tmp-"
_PROBE = "write-test"
# What heatbath writes: only these names are ever read from, written to or deleted in a checkpoint directory.
_NAME = re.compile(r"(?:state|draws)_\d{6,}\.npz|extra\.npz|meta\.json")
# Temporary files of the atomic writer (tempfile.mkstemp: prefix, 8 random characters, suffix).
_TEMP = re.compile(re.escape(_TEMP_PREFIX) + r"[a-z0-9_]{8}(?:" + _NAME.pattern + "|" + _PROBE + ")")
_MAX_META_BYTES = 256 << 20
_MAX_DEPTH = 64


class CheckpointWriteError(OSError):
    """A checkpoint could not be written: the directory is read-only, full, or was deleted.

    Raised when a checkpoint is opened (before the run compiles anything) or by a commit
    during the run; then ``partial`` holds what the run had made so far, as numpy arrays with
    axes (draw, chain, ...): ``{"draws": ..., "stats": ..., "num_draws": n}``, and the last
    committed checkpoint is intact.
    """

    def __init__(self, message: str, errno: Optional[int] = None, partial: Optional[dict] = None):
        super().__init__(errno, message) if errno is not None else super().__init__(message)
        self.message = message
        self.partial = partial

    def attach(self, partial: dict):
        self.partial = partial

    def __str__(self):
        text = self.message
        if self.partial is not None:
            text += (f". The {self.partial['num_draws']} draws made so far are attached to this error as "
                     "error.partial (numpy arrays with axes (draw, chain, ...): 'draws' and 'stats')")
        return text


class CheckpointLockedError(RuntimeError):
    """The checkpoint directory is being written by another run (it holds the directory's lock)."""


# -- files ---------------------------------------------------------------------------------
def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    for block in iter(lambda: os.read(fd, 1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def _create_temp(directory: str, name: str):
    """(fd, path) of a new temporary file in ``directory`` for ``name`` (every file heatbath creates)."""
    return tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=name)


def _atomic_write(path: str, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: str):
    """Make a rename durable (best effort: not every file system can fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(err: OSError) -> str:
    code = getattr(err, "errno", None)
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        return "the disk (or the quota) is full"
    if code in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
        return "the directory is read-only or not writable by this user"
    if code in (_errno.ENOENT, _errno.ENOTDIR):
        return "the directory does not exist (was it deleted?)"
    return "the file system refused the write"


def _write_probe(directory: str):
    """Create, write, sync and remove a small file: fails now if the run could not commit."""
    try:
        fd, tmp = _create_temp(directory, _PROBE)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as err:
        raise CheckpointWriteError(
            f"cannot write to the checkpoint directory {directory}: {_reason(err)} ({err.strerror or err}). "
            "Nothing was run: free space, fix the permissions or choose another directory",
            err.errno,
        ) from err


def _remove_temporaries(directory: str) -> list:
    """Remove the atomic writer's temporary files left by a run killed mid-write (under the lock)."""
    removed = []
    for name in os.listdir(directory):
        if _TEMP.fullmatch(name):
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    os.unlink(path)
                    removed.append(name)
    return removed


def _take_lock(directory: str) -> Optional[int]:
    """The fd of ``directory/.lock``, locked (flock, exclusive); CheckpointLockedError if another run holds it."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        if err.errno == _errno.ELOOP:
            raise ValueError(f"the checkpoint lock file {path} is a symbolic link: refused") from err
        raise CheckpointWriteError(f"cannot create the checkpoint lock file {path}: {_reason(err)} ({err})",
                                   err.errno) from err
    if fcntl is None:  # pragma: no cover
        return fd
    for attempt in range(2):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            try:
                holder = int(os.pread(fd, 32, 0).decode().strip() or -1)
            except (OSError, ValueError):
                holder = -1
            if attempt == 0 and holder == os.getpid():
                gc.collect()  # a failed run's Checkpoint that only a reference cycle keeps alive
                continue
            os.close(fd)
            who = "another run in this process" if holder == os.getpid() else (
                f"another run (process {holder})" if holder > 0 else "another run")
            raise CheckpointLockedError(
                f"the checkpoint directory {directory} is in use by {who}: two runs writing one checkpoint "
                "would interleave their commits. Wait for that run to end, or choose another directory"
            ) from None
        except OSError as err:  # a file system without flock (some network or FUSE mounts)
            warnings.warn(f"cannot lock the checkpoint directory {directory} ({err}): make sure no other run "
                          "writes it at the same time", RuntimeWarning, stacklevel=4)
            break
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# -- meta.json ------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_depth(obj, where: str):
    stack = [(obj, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise ValueError(f"checkpoint {where} is nested more than {_MAX_DEPTH} levels deep: "
                             "not a heatbath checkpoint")
        if isinstance(x, dict):
            stack.extend((v, depth + 1) for v in x.values())
        elif isinstance(x, list):
            stack.extend((v, depth + 1) for v in x)


def _check_name(name, field: str, expected: Optional[str] = None) -> str:
    """A plain file name that heatbath writes (``expected`` when given); never a path."""
    if not isinstance(name, str):
        raise ValueError(f"checkpoint field {field!r} must be a file name, not {type(name).__name__}")
    if expected is not None and name != expected:
        raise ValueError(
            f"checkpoint field {field!r} is {name[:200]!r} where heatbath writes {expected!r}: only the plain file "
            "names heatbath writes are accepted (no path, '..', subdirectory or other name)"
        )
    if not _NAME.fullmatch(name) or os.path.basename(name) != name or name in (META,):
        raise ValueError(f"checkpoint field {field!r} ({name[:200]!r}) is not a file name heatbath writes: refused")
    return name


def _check_desc(desc, field: str, expected: str):
    """The description of one array file in meta.json (see :func:`save_tree`)."""
    if not isinstance(desc, dict):
        raise ValueError(f"checkpoint field {field!r} must be an object, not {type(desc).__name__}")
    for key in ("file", "sha256", "kinds"):
        if key not in desc:
            raise ValueError(f"checkpoint field {field!r} has no {key!r}")
    _check_name(desc["file"], f"{field}.file", expected)
    digest = desc["sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"checkpoint field '{field}.sha256' is not a SHA-256 digest")
    kinds = desc["kinds"]
    if not isinstance(kinds, list):
        raise ValueError(f"checkpoint field '{field}.kinds' must be a list")
    for i, kind in enumerate(kinds):
        if not (isinstance(kind, list) and len(kind) == 2 and kind[0] in ("array", "key")
                and (kind[1] is None or isinstance(kind[1], str))):
            raise ValueError(f"checkpoint field '{field}.kinds[{i}]' must be ['array', null] or ['key', impl]")


def validate_meta(meta, where: str = "meta.json") -> dict:
    """Check the structure of a parsed meta.json; a ``ValueError`` naming the first bad field."""
    _check_depth(meta, where)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where} is not a heatbath checkpoint")
    version = meta.get("version")
    if not _is_int(version) or version != VERSION:
        raise ValueError(f"checkpoint version {version!r} is not supported (expected {VERSION})")
    for key in ("settings", "segments_done", "state", "draws"):
        if key not in meta:
            raise ValueError(f"checkpoint {where} is corrupted (no {key!r})")
    if not isinstance(meta["settings"], dict):
        raise ValueError(f"checkpoint field 'settings' must be an object, not {type(meta['settings']).__name__}")
    done = meta["segments_done"]
    if not _is_int(done) or done < 1:
        raise ValueError(f"checkpoint field 'segments_done' must be a positive integer, not {str(done)[:100]!r}")
    _check_desc(meta["state"], "state", f"state_{done:06d}.npz")
    draws = meta["draws"]
    if not isinstance(draws, list):
        raise ValueError(f"checkpoint field 'draws' must be a list, not {type(draws).__name__}")
    last = -1
    for i, desc in enumerate(draws):
        if not isinstance(desc, dict):
            raise ValueError(f"checkpoint field 'draws[{i}]' must be an object, not {type(desc).__name__}")
        segment = desc.get("segment")
        if not _is_int(segment):
            raise ValueError(f"checkpoint field 'draws[{i}].segment' must be an integer, not {str(segment)[:100]!r}")
        if segment <= last:
            raise ValueError(f"checkpoint field 'draws[{i}].segment' ({segment}) repeats or is out of order")
        if segment >= done:
            raise ValueError(
                f"checkpoint field 'draws[{i}].segment' ({segment}) is beyond segments_done ({done}): the draws list "
                "does not match the segments done"
            )
        last = segment
        _check_desc(desc, f"draws[{i}]", f"draws_{segment:06d}.npz")
    extra = meta.get("extra")
    if extra is not None:
        _check_desc(extra, "extra", EXTRA)
    return meta


# -- arrays ----------------------------------------------------------------------------------
def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_tree(path: str, tree: Any) -> dict:
    """Write the leaves of ``tree`` to ``path`` (npz); return a JSON-able description with the digest."""
    leaves = jax.tree.leaves(tree)
    arrays, kinds = {}, []
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            arrays[f"a{i}"] = np.asarray(jax.random.key_data(leaf))
            kinds.append(["key", str(jax.random.key_impl(leaf))])
        else:
            arr = np.asarray(leaf)
            if arr.dtype == object:
                raise TypeError("checkpoints hold numeric arrays only")
            arrays[f"a{i}"] = arr
            kinds.append(["array", None])
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return {
        "file": os.path.basename(path),
        "sha256": _sha256(path),
        "kinds": kinds,
        "shapes": [list(np.shape(a)) for a in arrays.values()],
        "dtypes": [str(a.dtype) for a in arrays.values()],
    }


def _expected(ref):
    """(shape, dtype) of the array stored for the leaf ``ref`` of the run's own tree."""
    if _is_key(ref):
        s = jax.eval_shape(jax.random.key_data, ref)
        return tuple(s.shape), np.dtype(s.dtype)
    if isinstance(ref, np.ndarray):
        return tuple(ref.shape), ref.dtype
    return tuple(np.shape(ref)), np.dtype(jnp.result_type(ref))


def _read_header(member) -> tuple:
    """(shape, fortran order, dtype, header length) of a .npy stream, reading only its header."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy format version {version} is not one heatbath writes")
    return tuple(shape), fortran, dtype, member.tell()


def _read_arrays(f, path: str, expected: list) -> list:
    """The arrays a0..a{n-1} of the npz ``f``, each checked against ``expected`` before it is decompressed."""
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        want = [f"a{i}.npy" for i in range(len(expected))]
        names = [info.filename for info in infos]
        if sorted(names) != sorted(want):
            raise ValueError(
                f"checkpoint {path} holds {len(names)} arrays, the run expects {len(expected)}: it was written by a "
                "different sampler or model"
            )
        out = []
        for name, (shape, dtype) in zip(want, expected):
            info = z.getinfo(name)
            with z.open(info) as member:
                got_shape, fortran, got_dtype, header = _read_header(member)
            if got_dtype.hasobject:
                raise ValueError(f"checkpoint {path}: {name} holds Python objects: refused")
            if got_shape != shape or got_dtype != dtype:
                raise ValueError(
                    f"checkpoint {path}: an array of shape {got_shape} and dtype {got_dtype} where this run "
                    f"expects {shape} {dtype}: it was written by a different run"
                )
            size = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if info.file_size != size:
                raise ValueError(
                    f"checkpoint {path}: {name} claims {info.file_size} bytes where a {shape} {dtype} array takes "
                    f"{size}: refused"
                )
            with z.open(info) as member:
                out.append(np.lib.format.read_array(member, allow_pickle=False))
        return out


def load_tree(directory: str, desc: dict, like: Any, field: str = "file") -> Any:
    """Load a tree written by :func:`save_tree`, checking its name, digest and match with ``like``.

    Only a plain file name heatbath writes is accepted (never a path or a symbolic link); every
    array's shape and dtype is read from its header and checked against ``like`` before the
    array is decompressed.
    """
    if not isinstance(desc, dict):
        raise ValueError(f"checkpoint field {field!r} must be an object, not {type(desc).__name__}")
    _check_desc(desc, field, desc.get("file") if isinstance(desc.get("file"), str) else None)
    path = os.path.join(directory, desc["file"])
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {path} is missing") from None
    except OSError as err:
        if err.errno == _errno.ELOOP:
            raise ValueError(f"checkpoint file {path} ({field}) is a symbolic link: refused") from None
        raise ValueError(f"checkpoint file {path} cannot be read: {err}") from err
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"checkpoint file {path} ({field}) is not a regular file: refused")
        if _sha256_fd(fd) != desc["sha256"]:
            raise ValueError(f"checkpoint file {path} is corrupted or was modified (SHA-256 mismatch)")
        f.seek(0)
        leaves_like, treedef = jax.tree.flatten(like)
        kinds = desc["kinds"]
        if len(kinds) != len(leaves_like):
            raise ValueError(
                f"checkpoint {path} holds {len(kinds)} arrays, the run expects {len(leaves_like)}: it was "
                "written by a different sampler or model"
            )
        for (kind, impl), ref in zip(kinds, leaves_like):
            if (kind == "key") != _is_key(ref):
                raise ValueError(f"checkpoint {path} does not match this run (a PRNG key where an array is "
                                 "expected, or the reverse)")
            if kind == "key" and impl != str(jax.random.key_impl(ref)):
                raise ValueError(f"checkpoint {path}: PRNG implementation {impl!r}, this run uses "
                                 f"{str(jax.random.key_impl(ref))!r}")
        try:
            arrays = _read_arrays(f, path, [_expected(ref) for ref in leaves_like])
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged zip: BadZipFile, EOFError, ...
            raise ValueError(f"checkpoint file {path} cannot be read: {err}") from err
    out = []
    for arr, ref in zip(arrays, leaves_like):
        if _is_key(ref):
            leaf = jax.random.wrap_key_data(jnp.asarray(arr), impl=jax.random.key_impl(ref))
        elif isinstance(ref, np.ndarray):  # host-side state (e.g. float64 moments) stays on the host
            leaf = arr
        else:
            leaf = jnp.asarray(arr)
            sharding = getattr(ref, "sharding", None)
            if sharding is not None and isinstance(ref, jax.Array):
                leaf = jax.device_put(leaf, sharding)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


# -- the checkpoint ------------------------------------------------------------------------
class Checkpoint:
    """The checkpoint directory of one run (see the module docstring).

    :meth:`open` takes the directory's lock (and checks it can be written); :meth:`close`
    releases it. Use it as a context manager, or :func:`hold`, so that the lock is released
    however the run ends; a Checkpoint that is garbage-collected releases it too.
    """

    def __init__(self, path: str, settings: dict):
        self.path = os.fspath(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.meta = None
        self._lock_fd = None
        self._release = None
        self._dir_id = None

    # -- the directory and its lock --------------------------------------------------------
    def open(self, create: bool = True) -> "Checkpoint":
        """Create the directory (``create``), check a file can be written there, take its lock and
        remove the temporary files of a write that was killed. Idempotent."""
        if self._lock_fd is not None:
            return self
        if create:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as err:
                raise CheckpointWriteError(
                    f"cannot create the checkpoint directory {self.path}: {_reason(err)} ({err.strerror or err})",
                    err.errno,
                ) from err
        if not os.path.isdir(self.path):
            raise ValueError(f"the checkpoint path {self.path} is not a directory")
        _write_probe(self.path)
        fd = _take_lock(self.path)
        self._lock_fd = fd
        self._release = weakref.finalize(self, os.close, fd)
        try:
            st = os.stat(self.path)
            self._dir_id = (st.st_dev, st.st_ino)
            _remove_temporaries(self.path)
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
        the previous commit stays intact.
        """
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
            _atomic_write(os.path.join(self.path, META), lambda f: f.write(json.dumps(meta, indent=1).encode()))
            _fsync_dir(self.path)
        except CheckpointWriteError:
            raise
        except OSError as err:
            done = previous["segments_done"] if previous else 0
            kept = f"the last commit ({done} segments done) is intact" if done else "nothing had been committed yet"
            raise CheckpointWriteError(
                f"writing the checkpoint at {self.path} (after {segments_done} segments) failed: {_reason(err)} "
                f"({err.strerror or err}); {kept}", err.errno) from err
        old = previous["state"]["file"] if previous else None
        if old and old != state_desc["file"]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, _check_name(old, "state.file")))
        self.meta = meta
        return meta

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def read_meta(path: str) -> dict:
        """The parsed and checked meta.json of the checkpoint at ``path`` (a ``ValueError`` if there is none)."""
        meta_path = os.path.join(os.fspath(path), META)
        try:
            fd = os.open(meta_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ValueError(f"no checkpoint at {path} (meta.json missing)") from None
        except OSError as err:
            if err.errno == _errno.ELOOP:
                raise ValueError(f"checkpoint {meta_path} is a symbolic link: refused") from None
            raise ValueError(f"checkpoint {meta_path} cannot be read: {err}") from err
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError(f"checkpoint {meta_path} is not a regular file: refused")
            try:
                raw = f.read(_MAX_META_BYTES + 1)
            except OSError as err:
                raise ValueError(f"checkpoint {meta_path} cannot be read: {err}") from err
        if len(raw) > _MAX_META_BYTES:
            raise ValueError(f"checkpoint {meta_path} is larger than {_MAX_META_BYTES >> 20} MiB: refused")
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
        theirs = meta["settings"]
        keys = list(self.settings) + [k for k in theirs if k not in self.settings]
        diff = {k: (theirs.get(k), self.settings.get(k)) for k in keys if theirs.get(k) != self.settings.get(k)}
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
