"""Validation of a checkpoint's ``meta.json``: field types, file names, consistency; every
malformed field is a ``ValueError`` that names it."""

from __future__ import annotations

from heatbath.drivers.checkpoint_io import EXTRA, FORMAT, VERSION, check_desc, is_int

__all__ = ["validate_meta"]

MAX_DEPTH = 64

def check_depth(obj, where: str):
    stack = [(obj, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"checkpoint {where} is nested more than {MAX_DEPTH} levels deep: "
                             "not a heatbath checkpoint")
        if isinstance(x, dict):
            stack.extend((v, depth + 1) for v in x.values())
        elif isinstance(x, list):
            stack.extend((v, depth + 1) for v in x)


def validate_meta(meta, where: str = "meta.json") -> dict:
    """Check the structure of a parsed meta.json; a ``ValueError`` naming the first bad field."""
    check_depth(meta, where)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where} is not a heatbath checkpoint")
    version = meta.get("version")
    if not is_int(version) or version != VERSION:
        raise ValueError(f"checkpoint version {version!r} is not supported (expected {VERSION})")
    for key in ("settings", "segments_done", "state", "draws"):
        if key not in meta:
            raise ValueError(f"checkpoint {where} is corrupted (no {key!r})")
    if not isinstance(meta["settings"], dict):
        raise ValueError(f"checkpoint field 'settings' must be an object, not {type(meta['settings']).__name__}")
    done = meta["segments_done"]
    if not is_int(done) or done < 1:
        raise ValueError(f"checkpoint field 'segments_done' must be a positive integer, not {str(done)[:100]!r}")
    check_desc(meta["state"], "state", f"state_{done:06d}.npz")
    draws = meta["draws"]
    if not isinstance(draws, list):
        raise ValueError(f"checkpoint field 'draws' must be a list, not {type(draws).__name__}")
    last = -1
    for i, desc in enumerate(draws):
        if not isinstance(desc, dict):
            raise ValueError(f"checkpoint field 'draws[{i}]' must be an object, not {type(desc).__name__}")
        segment = desc.get("segment")
        if not is_int(segment):
            raise ValueError(f"checkpoint field 'draws[{i}].segment' must be an integer, not {str(segment)[:100]!r}")
        if segment <= last:
            raise ValueError(f"checkpoint field 'draws[{i}].segment' ({segment}) repeats or is out of order")
        if segment >= done:
            raise ValueError(
                f"checkpoint field 'draws[{i}].segment' ({segment}) is beyond segments_done ({done}): the draws list "
                "does not match the segments done"
            )
        last = segment
        check_desc(desc, f"draws[{i}]", f"draws_{segment:06d}.npz")
    extra = meta.get("extra")
    if extra is not None:
        check_desc(extra, "extra", EXTRA)
    return meta


# -- arrays ----------------------------------------------------------------------------------
