"""Checkpoints: plain arrays (npz) with JSON metadata, written atomically, never pickled.

A checkpoint is a directory:

    meta.json            format, version, the run's settings, what is done, and the SHA-256 of
                         every array file; written last, by rename: it is the commit point
    state_<k>.npz        the loop's carry after k segments (sampler states, estimator states,
                         PRNG keys as raw key data), plus anything the run must not recompute
                         (e.g. the control-variate centre)
    draws_<j>.npz        the draws and stats of sampling chunk j

Every file is written to a temporary name and renamed, then ``meta.json`` is replaced the same
way, so a run killed at any instant (SIGKILL included) leaves the previous consistent
checkpoint. Loading checks the format, the settings of the run that asks to resume, every
file's digest, and the shapes and dtypes of the state against a freshly built one; a corrupted
or tampered file is refused with a ``ValueError``. (The digests detect corruption and edits of
the arrays; they are not a signature against someone who rewrites meta.json too.) Arrays are
loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Checkpoint", "save_tree", "load_tree", "FORMAT", "VERSION"]

FORMAT = "heatbath-checkpoint"
VERSION = 1


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: str, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def load_tree(directory: str, desc: dict, like: Any) -> Any:
    """Load a tree written by :func:`save_tree`, checking its digest and its match with ``like``."""
    path = os.path.join(directory, desc["file"])
    if not os.path.exists(path):
        raise ValueError(f"checkpoint file {path} is missing")
    if _sha256(path) != desc["sha256"]:
        raise ValueError(f"checkpoint file {path} is corrupted or was modified (SHA-256 mismatch)")
    leaves_like, treedef = jax.tree.flatten(like)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[f"a{i}"] for i in range(len(desc["kinds"]))]
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"checkpoint file {path} cannot be read: {err}") from err
    if len(arrays) != len(leaves_like):
        raise ValueError(
            f"checkpoint {path} holds {len(arrays)} arrays, the run expects {len(leaves_like)}: it was "
            "written by a different sampler or model"
        )
    out = []
    for arr, (kind, impl), ref in zip(arrays, desc["kinds"], leaves_like):
        if kind == "key":
            if not _is_key(ref):
                raise ValueError(f"checkpoint {path} does not match this run (a PRNG key where an array is expected)")
            leaf = jax.random.wrap_key_data(jnp.asarray(arr), impl=impl)
            if leaf.shape != ref.shape:
                raise ValueError(f"checkpoint {path}: key shape {leaf.shape} != expected {ref.shape}")
        else:
            ref_shape = np.shape(ref)
            ref_dtype = ref.dtype if isinstance(ref, np.ndarray) else jnp.result_type(ref)
            if tuple(arr.shape) != tuple(ref_shape) or arr.dtype != ref_dtype:
                raise ValueError(
                    f"checkpoint {path}: an array of shape {arr.shape} and dtype {arr.dtype} where this run "
                    f"expects {tuple(ref_shape)} {ref_dtype}: it was written by a different run"
                )
            if isinstance(ref, np.ndarray):  # host-side state (e.g. float64 moments) stays on the host
                leaf = arr
            else:
                leaf = jnp.asarray(arr)
                sharding = getattr(ref, "sharding", None)
                if sharding is not None and isinstance(ref, jax.Array):
                    leaf = jax.device_put(leaf, sharding)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


class Checkpoint:
    """The checkpoint directory of one run (see the module docstring)."""

    def __init__(self, path: str, settings: dict):
        self.path = os.fspath(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.meta = None

    # -- writing ---------------------------------------------------------------------------
    def commit(self, segments_done: int, state: Any, new_draws: list, previous: dict | None, extra: Any = None) -> dict:
        """Write the state after ``segments_done`` segments and the new draw chunks, then meta.json.

        ``extra`` (e.g. the control-variate centre) is written once, on the first commit.
        """
        os.makedirs(self.path, exist_ok=True)
        extra_desc = previous.get("extra") if previous else None
        if extra_desc is None and extra is not None:
            extra_desc = save_tree(os.path.join(self.path, "extra.npz"), extra)
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
        _atomic_write(os.path.join(self.path, "meta.json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
        old = previous["state"]["file"] if previous else None
        if old and old != state_desc["file"]:
            try:
                os.unlink(os.path.join(self.path, old))
            except FileNotFoundError:
                pass
        self.meta = meta
        return meta

    # -- reading ---------------------------------------------------------------------------
    @staticmethod
    def read_meta(path: str) -> dict:
        meta_path = os.path.join(os.fspath(path), "meta.json")
        if not os.path.exists(meta_path):
            raise ValueError(f"no checkpoint at {path} (meta.json missing)")
        try:
            with open(meta_path, "rb") as f:
                meta = json.loads(f.read().decode())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"checkpoint {meta_path} is corrupted: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a heatbath checkpoint")
        if meta.get("version") != VERSION:
            raise ValueError(f"checkpoint version {meta.get('version')} is not supported (expected {VERSION})")
        for key in ("settings", "segments_done", "state", "draws"):
            if key not in meta:
                raise ValueError(f"checkpoint {meta_path} is corrupted (no {key!r})")
        return meta

    def has_extra(self) -> bool:
        return bool(self.read_meta(self.path).get("extra"))

    def load_extra(self, like: Any) -> Any:
        return load_tree(self.path, self.read_meta(self.path)["extra"], like)

    def check_settings(self, meta: dict):
        theirs = meta["settings"]
        keys = list(self.settings) + [k for k in theirs if k not in self.settings]
        diff = {k: (theirs.get(k), self.settings.get(k)) for k in keys if theirs.get(k) != self.settings.get(k)}
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"the checkpoint at {self.path} was written by a different run ({detail})")
