"""Checkpoint files: errors, the atomic writer, the write probe, the lock, and array files
(npz) written and read with their digests and shapes checked before decompression.
See :mod:`heatbath.drivers.checkpoint` for the format."""

from __future__ import annotations

import contextlib
import errno as _errno
import gc
import hashlib
import os
import re
import stat
import tempfile
import warnings
import zipfile
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

__all__ = ["is_int", "check_name", "check_desc", "CheckpointWriteError", "CheckpointLockedError", "atomic_write", "create_temp", "fsync_dir",
           "write_probe", "remove_temporaries", "take_lock", "sha256", "reason", "MAX_META_BYTES", "open_regular", "save_tree", "load_tree", "FORMAT",
           "VERSION", "META", "LOCK", "EXTRA", "NAME", "TEMP"]

FORMAT = "heatbath-checkpoint"
VERSION = 1
META = "meta.json"
LOCK = ".lock"
EXTRA = "extra.npz"
TEMP_PREFIX = ".tmp-"
PROBE = "write-test"
# What heatbath writes: only these names are ever read from, written to or deleted in a checkpoint directory.
NAME = re.compile(r"(?:state|draws)_\d{6,}\.npz|extra\.npz|meta\.json")
# Temporary files of the atomic writer (tempfile.mkstemp: prefix, 8 random characters, suffix).
TEMP = re.compile(re.escape(TEMP_PREFIX) + r"[a-z0-9_]{8}(?:" + NAME.pattern + "|" + PROBE + ")")
MAX_META_BYTES = 256 << 20
MAX_DEPTH = 64



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
def sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    for block in iter(lambda: os.read(fd, 1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def create_temp(directory: str, name: str):
    """(fd, path) of a new temporary file in ``directory`` for ``name`` (every file heatbath creates)."""
    return tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=name)


def atomic_write(path: str, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temp(directory, os.path.basename(path))
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


def fsync_dir(directory: str):
    """Make a rename durable (best effort: not every file system can fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def reason(err: OSError) -> str:
    code = getattr(err, "errno", None)
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        return "the disk (or the quota) is full"
    if code in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
        return "the directory is read-only or not writable by this user"
    if code in (_errno.ENOENT, _errno.ENOTDIR):
        return "the directory does not exist (was it deleted?)"
    return "the file system refused the write"


def write_probe(directory: str):
    """Create, write, sync and remove a small file: fails now if the run could not commit."""
    try:
        fd, tmp = create_temp(directory, PROBE)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as err:
        raise CheckpointWriteError(
            f"cannot write to the checkpoint directory {directory}: {reason(err)} ({err.strerror or err}). "
            "Nothing was run: free space, fix the permissions or choose another directory",
            err.errno,
        ) from err


def remove_temporaries(directory: str) -> list:
    """Remove the atomic writer's temporary files left by a run killed mid-write (under the lock)."""
    removed = []
    for name in os.listdir(directory):
        if TEMP.fullmatch(name):
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                    os.unlink(path)
                    removed.append(name)
    return removed


def take_lock(directory: str) -> Optional[int]:
    """The fd of ``directory/.lock``, locked (flock, exclusive); CheckpointLockedError if another run holds it."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        if err.errno == _errno.ELOOP:
            raise ValueError(f"the checkpoint lock file {path} is a symbolic link: refused") from err
        raise CheckpointWriteError(f"cannot create the checkpoint lock file {path}: {reason(err)} ({err})",
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

def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_name(name, field: str, expected: Optional[str] = None) -> str:
    """A plain file name that heatbath writes (``expected`` when given); never a path."""
    if not isinstance(name, str):
        raise ValueError(f"checkpoint field {field!r} must be a file name, not {type(name).__name__}")
    if expected is not None and name != expected:
        raise ValueError(
            f"checkpoint field {field!r} is {name[:200]!r} where heatbath writes {expected!r}: only the plain file "
            "names heatbath writes are accepted (no path, '..', subdirectory or other name)"
        )
    if not NAME.fullmatch(name) or os.path.basename(name) != name or name in (META,):
        raise ValueError(f"checkpoint field {field!r} ({name[:200]!r}) is not a file name heatbath writes: refused")
    return name


def check_desc(desc, field: str, expected: str):
    """The description of one array file in meta.json (see :func:`save_tree`)."""
    if not isinstance(desc, dict):
        raise ValueError(f"checkpoint field {field!r} must be an object, not {type(desc).__name__}")
    for key in ("file", "sha256", "kinds"):
        if key not in desc:
            raise ValueError(f"checkpoint field {field!r} has no {key!r}")
    check_name(desc["file"], f"{field}.file", expected)
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


def is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_tree(path: str, tree: Any) -> dict:
    """Write the leaves of ``tree`` to ``path`` (npz); return a JSON-able description with the digest."""
    leaves = jax.tree.leaves(tree)
    arrays, kinds = {}, []
    for i, leaf in enumerate(leaves):
        if is_key(leaf):
            arrays[f"a{i}"] = np.asarray(jax.random.key_data(leaf))
            kinds.append(["key", str(jax.random.key_impl(leaf))])
        else:
            arr = np.asarray(leaf)
            if arr.dtype == object:
                raise TypeError("checkpoints hold numeric arrays only")
            arrays[f"a{i}"] = arr
            kinds.append(["array", None])
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return {
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "kinds": kinds,
        "shapes": [list(np.shape(a)) for a in arrays.values()],
        "dtypes": [str(a.dtype) for a in arrays.values()],
    }


def expected(ref):
    """(shape, dtype) of the array stored for the leaf ``ref`` of the run's own tree."""
    if is_key(ref):
        s = jax.eval_shape(jax.random.key_data, ref)
        return tuple(s.shape), np.dtype(s.dtype)
    if isinstance(ref, np.ndarray):
        return tuple(ref.shape), ref.dtype
    return tuple(np.shape(ref)), np.dtype(jnp.result_type(ref))


def read_header(member) -> tuple:
    """(shape, fortran order, dtype, header length) of a .npy stream, reading only its header."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f".npy format version {version} is not one heatbath writes")
    return tuple(shape), fortran, dtype, member.tell()


def read_arrays(f, path: str, expected: list) -> list:
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
                got_shape, fortran, got_dtype, header = read_header(member)
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


def open_regular(path: str, what: str, missing: str):
    """``path`` opened for reading, refusing a symbolic link (``O_NOFOLLOW``) and anything but a
    regular file; every failure is a ``ValueError``: ``missing`` when it does not exist, else
    naming it as ``what``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ValueError(missing) from None
    except OSError as err:
        if err.errno == _errno.ELOOP:
            raise ValueError(f"{what} is a symbolic link: refused") from None
        raise ValueError(f"{what} cannot be read: {err}") from err
    f = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise ValueError(f"{what} is not a regular file: refused")
    return f


def load_tree(directory: str, desc: dict, like: Any, field: str = "file") -> Any:
    """Load a tree written by :func:`save_tree`, checking its name, digest and match with ``like``.

    Only a plain file name heatbath writes is accepted (never a path or a symbolic link); every
    array's shape and dtype is read from its header and checked against ``like`` before the
    array is decompressed.
    """
    if not isinstance(desc, dict):
        raise ValueError(f"checkpoint field {field!r} must be an object, not {type(desc).__name__}")
    check_desc(desc, field, desc.get("file") if isinstance(desc.get("file"), str) else None)
    path = os.path.join(directory, desc["file"])
    with open_regular(path, f"checkpoint file {path} ({field})", f"checkpoint file {path} is missing") as f:
        fd = f.fileno()
        if sha256_fd(fd) != desc["sha256"]:
            raise ValueError(f"checkpoint file {path} is corrupted or was modified (SHA-256 mismatch)")
        f.seek(0)
        leaves_like, treedef = jax.tree.flatten(like)
        kinds = desc["kinds"]
        if len(kinds) != len(leaves_like):
            raise ValueError(f"checkpoint {path} holds {len(kinds)} arrays, the run expects {len(leaves_like)}: it "
                             "was written by a different sampler or model, or by a heatbath before 2026-12-05 (whose "
                             "on_divergence='stop' guard kept a whole state per chain): rerun it from the start")
        for (kind, impl), ref in zip(kinds, leaves_like):
            if (kind == "key") != is_key(ref):
                raise ValueError(f"checkpoint {path} does not match this run (a PRNG key where an array is "
                                 "expected, or the reverse)")
            if kind == "key" and impl != str(jax.random.key_impl(ref)):
                raise ValueError(f"checkpoint {path}: PRNG implementation {impl!r}, this run uses "
                                 f"{str(jax.random.key_impl(ref))!r}")
        try:
            arrays = read_arrays(f, path, [expected(ref) for ref in leaves_like])
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged zip: BadZipFile, EOFError, ...
            raise ValueError(f"checkpoint file {path} cannot be read: {err}") from err
    out = []
    for arr, ref in zip(arrays, leaves_like):
        if is_key(ref):
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
