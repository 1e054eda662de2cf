"""The on-disk cache of :func:`heatbath.diagnostics.reference`: npz arrays + a JSON record.

A reference is stored under its key (a digest of the model's program, its data and the run's
settings, :func:`cache_key`) as two files in the cache directory:

- ``<key>.<sha>.npz``: the arrays (per-site statistics and, optionally, the draws), float64,
  written with ``numpy.savez`` (no pickle; read with ``allow_pickle=False``);
- ``<key>.json``: everything else (settings, diagnostics, site shapes), the name and SHA-256 of
  the npz file, and a SHA-256 of the record itself.

Both are written atomically (a temporary file, fsync, rename), the npz first: the JSON record
is the commit, and it names the npz it belongs to, so two processes writing the same key never
leave a record pointing at the other's arrays. On reading, a record that does not parse, whose
checksum does not match, that names another key or a file that is not a plain ``.npz`` name in
the directory, whose npz digest differs or whose arrays do not have the recorded names, shapes
and dtypes is *invalid*: :func:`load` returns the reason and the caller recomputes (and
overwrites). The checksums detect corruption and casual edits; they are not a signature.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from typing import Optional

import numpy as np

from heatbath.drivers.checkpoint_io import atomic_write, fsync_dir, open_regular

__all__ = ["FORMAT", "cache_dir", "cache_key", "load", "save"]

FORMAT = "heatbath.reference/1"
STATS = ("mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "rhat", "q05", "q50", "q95")
_KEY = re.compile(r"^[0-9a-f]{32}$")


def cache_dir(directory=None) -> str:
    """``directory``, else ``$HEATBATH_CACHE/reference``, else ``~/.cache/heatbath/reference``."""
    if directory is not None:
        return os.fsdecode(os.fspath(directory))
    root = os.environ.get("HEATBATH_CACHE")
    if root:
        return os.path.join(root, "reference")
    return os.path.join(os.path.expanduser("~"), ".cache", "heatbath", "reference")


def cache_key(program: str, data: str, settings: dict) -> str:
    """A 32-hex-digit BLAKE2b digest of the program digest, the data digest and the settings."""
    text = json.dumps({"format": FORMAT, "program": program, "data": data, "settings": settings},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _array_names(sites: dict, has_draws: bool) -> dict:
    """npz member -> (site, what): ``s<i>_<stat>`` for statistics, ``d<i>`` for draws (site
    names may hold any character, so the members are named by the site's position)."""
    names = {}
    for i, site in enumerate(sites):
        for stat in STATS:
            names[f"s{i}_{stat}"] = (site, stat)
        if has_draws:
            names[f"d{i}"] = (site, None)
    return names


def save(directory: str, key: str, *, stats: dict, draws: Optional[dict], meta: dict) -> Optional[str]:
    """Write a reference; returns the JSON path, or None (with a warning) when it cannot be written."""
    # Sorted: the record is JSON with sorted keys, and the members are numbered in its order.
    sites = {site: list(np.shape(stats[site]["mean"])) for site in sorted(stats)}
    arrays = {}
    for member, (site, stat) in _array_names(sites, draws is not None).items():
        arrays[member] = np.asarray(stats[site][stat] if stat else draws[site], np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    npz_name = f"{key}.{digest[:16]}.npz"
    record = dict(meta, format=FORMAT, key=key, sites=sites, has_draws=draws is not None,
                  arrays={"file": npz_name, "sha256": digest})
    record["checksum"] = _checksum(record)
    json_path = os.path.join(directory, f"{key}.json")
    try:
        os.makedirs(directory, exist_ok=True)
        atomic_write(os.path.join(directory, npz_name), lambda f: f.write(blob))
        atomic_write(json_path, lambda f: f.write(json.dumps(record, indent=1, sort_keys=True).encode()))
        fsync_dir(directory)
    except OSError as err:
        warnings.warn(f"the reference could not be cached in {directory}: {err}", UserWarning, stacklevel=3)
        return None
    for name in os.listdir(directory):  # arrays of earlier records of this key
        if name.startswith(key + ".") and name.endswith(".npz") and name != npz_name:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    return json_path


def load(directory: str, key: str, want_draws: bool):
    """``(record, stats, draws)`` of a valid cached reference, ``None`` when there is none (or it
    lacks draws that are wanted), or a string: why the cached files are invalid."""
    if not _KEY.match(key):
        raise ValueError(f"not a reference cache key: {key!r}")
    path = os.path.join(directory, f"{key}.json")
    if not os.path.lexists(path):
        return None
    try:
        with open_regular(path, f"cache record {path}", f"cache record {path} is missing") as f:
            record = json.loads(f.read().decode())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return f"the record {path} cannot be read: {err}"
    if not isinstance(record, dict) or record.get("checksum") != _checksum(record):
        return f"the record {path} does not match its checksum"
    if record.get("format") != FORMAT or record.get("key") != key:
        return f"the record {path} has another format or key"
    try:
        sites = {str(s): tuple(int(n) for n in shape) for s, shape in record["sites"].items()}
        has_draws = bool(record["has_draws"])
        npz_name, digest = record["arrays"]["file"], record["arrays"]["sha256"]
        num_chains, num_samples = int(record["settings"]["num_chains"]), int(record["settings"]["num_samples"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return f"the record {path} is malformed: {err!r}"
    if want_draws and not has_draws:
        return None
    if not (isinstance(npz_name, str) and re.fullmatch(re.escape(key) + r"\.[0-9a-f]{16}\.npz", npz_name)):
        return f"the record {path} names an unexpected array file {npz_name!r}"
    npz_path = os.path.join(directory, npz_name)
    try:
        with open_regular(npz_path, f"cache arrays {npz_path}", f"cache arrays {npz_path} are missing") as f:
            blob = f.read()
    except ValueError as err:
        return str(err)
    if hashlib.sha256(blob).hexdigest() != digest:
        return f"the arrays {npz_path} do not match the record's SHA-256"
    expected = _array_names(sites, has_draws)
    stats = {site: {} for site in sites}
    draws = {} if has_draws else None
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            if set(npz.files) != set(expected):
                return f"the arrays {npz_path} are not the ones recorded"
            for member, (site, stat) in expected.items():
                arr = npz[member]
                shape = sites[site] if stat else (num_chains, num_samples) + sites[site]
                if arr.dtype != np.float64 or arr.shape != shape:
                    return f"the array {member} of {npz_path} has shape {arr.shape} / {arr.dtype}, expected {shape}"
                arr.setflags(write=False)
                if stat:
                    stats[site][stat] = arr
                else:
                    draws[site] = arr
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        return f"the arrays {npz_path} cannot be read: {err}"
    return record, stats, (draws if want_draws else None)
