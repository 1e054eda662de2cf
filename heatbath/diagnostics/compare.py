r"""Compare draws with a reference posterior: standardised moment errors and sample distances.

For each parameter element, with pooled draws' mean xbar and sd s (ddof = 1, over chains and
draws) and the reference's mean m and sd sigma:

.. math:: z = |\bar x - m| / \sigma, \qquad r = s / \sigma,

summarised by max |z| and the range of r (as :meth:`heatbath.models.ReferencePosterior.compare`).
When both sides have draws, the joint distances between the draws of the compared parameters,
each coordinate standardised by the reference (x - m) / sigma, are added: sliced W2 (exact in
1-D), the unbiased squared MMD (Gaussian kernel, median bandwidth) and the energy distance, in
reference-sd units. The O(n^2) ones use at most ``max_draws`` evenly spaced draws per side.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from heatbath.diagnostics import distances as _dist

__all__ = ["compare", "Comparison"]


class Comparison(Mapping):
    """The result of :func:`compare`: a read-only mapping with a readable table.

    Keys: ``per_param`` (name -> dict of ``mean``, ``sd``, ``ref_mean``, ``ref_sd``, ``z``,
    ``sd_ratio`` arrays shaped like the parameter), ``max_abs_z``, ``sd_ratio_min``,
    ``sd_ratio_max``, ``distances`` (``sliced_w2``, ``mmd2``, ``energy``; empty without
    reference draws), ``num_draws``, ``num_ref_draws`` (None without draws), ``reference``.
    """

    def __init__(self, data: dict):
        self._data = data

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def rows(self) -> list[dict]:
        """One dict per scalar parameter element (``param``, ``mean``, ..., ``sd_ratio``)."""
        out = []
        for name, st in self._data["per_param"].items():
            shape = np.shape(st["mean"])
            for idx in np.ndindex(*shape):
                label = name + (f"[{','.join(map(str, idx))}]" if idx else "")
                out.append({"param": label, **{k: float(np.asarray(v)[idx]) for k, v in st.items()}})
        return out

    def to_string(self, max_rows: int = 40) -> str:
        """A text table: per-element moments, then the summary and the distances."""
        rows = self.rows()
        width = max([5] + [len(r["param"]) for r in rows[:max_rows]])
        cols = ("mean", "ref_mean", "z", "sd", "ref_sd", "sd_ratio")
        lines = [f"{'param':<{width}} " + " ".join(f"{c:>10}" for c in cols)]
        for r in rows[:max_rows]:
            lines.append(f"{r['param']:<{width}} " + " ".join(f"{r[c]:>10.4g}" for c in cols))
        if len(rows) > max_rows:
            lines.append(f"... {len(rows) - max_rows} more rows (to_dataframe() has them all)")
        d = self._data
        lines.append(
            f"max |z| = {d['max_abs_z']:.4g}; sd ratio in [{d['sd_ratio_min']:.4g}, {d['sd_ratio_max']:.4g}]; "
            f"{d['num_draws']} draws vs reference {d['reference']!s}"
        )
        if d["distances"]:
            dist = ", ".join(f"{k} = {v:.4g}" for k, v in d["distances"].items())
            lines.append(f"distances (reference-sd units, {d['num_ref_draws']} reference draws): {dist}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_string()

    def to_dataframe(self):
        """The per-element table as a pandas DataFrame (index: ``param``)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas ships with ArviZ
            raise ImportError("to_dataframe needs pandas (pip install pandas)") from err
        return pd.DataFrame(self.rows()).set_index("param")


def _samples_of(obj, what: str) -> dict:
    """name -> (chain, draw, *shape) float64 arrays of a Result or a dict."""
    samples = getattr(obj, "samples", None)
    if samples is not None and not isinstance(obj, Mapping):
        if not samples:
            raise ValueError(f"{what}: this result kept no draws (keep='moments'): nothing to compare")
        obj = samples
    if not isinstance(obj, Mapping):
        raise TypeError(f"{what} must be a heatbath Result or a dict name -> (chain, draw, ...) array, got {type(obj).__name__}")
    if not obj:
        raise ValueError(f"{what} is empty")
    out = {}
    for name, arr in obj.items():
        a = np.asarray(arr)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{what}[{name!r}] must hold real numbers, got dtype {a.dtype}")
        out[name] = a.astype(np.float64)
    return out


def _reference_of(reference, site_shapes: dict) -> tuple[dict, Optional[dict], str]:
    """(moments name -> (mean, sd), draws name -> (n, *shape) or None, label)."""
    if isinstance(reference, str):
        from heatbath.models import reference as load

        reference = load(reference)
    if hasattr(reference, "reference") and hasattr(reference, "draws") and not isinstance(reference, Mapping):
        moments = {k: (np.asarray(v["mean"], np.float64), np.asarray(v["sd"], np.float64))
                   for k, v in reference.reference.items()}
        draws = None
        if reference.draws is not None:
            draws = {k: np.asarray(v, np.float64).reshape((-1,) + np.shape(v)[2:]) for k, v in reference.draws.items()}
        return moments, draws, repr(reference.name)
    if getattr(reference, "samples", None) is not None and not isinstance(reference, Mapping):
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in _samples_of(reference, "reference").items()}
        return None, flat, "Result"
    if not isinstance(reference, Mapping) or not reference:
        raise TypeError(
            "reference must be a bundled reference name, a ReferencePosterior, a Result, a dict name -> draws "
            f"or a dict name -> {{'mean', 'sd'}}; got {type(reference).__name__}"
        )
    if all(isinstance(v, Mapping) for v in reference.values()):
        moments = {}
        for k, v in reference.items():
            if "mean" not in v or "sd" not in v:
                raise ValueError(f"reference[{k!r}] needs 'mean' and 'sd', has {list(v)}")
            moments[k] = (np.asarray(v["mean"], np.float64), np.asarray(v["sd"], np.float64))
        return moments, None, "moments"
    draws = {}
    for k, v in reference.items():
        a = np.asarray(v, np.float64)
        shape = site_shapes.get(k)
        if shape is not None and a.ndim == len(shape) + 2 and a.shape[2:] == shape:
            a = a.reshape((-1,) + shape)  # (chain, draw, *shape)
        draws[k] = a  # otherwise taken as (n, *shape); checked below
    return None, draws, "draws"


def compare(result_or_draws, reference, *, params: Optional[Sequence[str]] = None, max_draws: int = 2000,
            num_projections: int = 200, seed=0) -> Comparison:
    """Compare a run's draws with a reference posterior.

    Args:
      result_or_draws: a heatbath Result (its constrained ``samples``) or a dict name ->
        (chain, draw, *shape) array.
      reference: a bundled reference name (``hb.models.list_references()`` or an alias such as
        ``"german_credit"``) or a ``ReferencePosterior``: its gold-standard moments, and its
        draws when it has some; a dict name -> draws ((n, *shape) or (chain, draw, *shape));
        a dict name -> ``{"mean": ..., "sd": ...}``; or another Result.
      params: parameters to compare (default: every name present on both sides).
      max_draws: draws per side used by the O(n^2) distances (evenly spaced).
      num_projections, seed: for the sliced W2 (exact when one scalar is compared).

    Returns:
      A :class:`Comparison` (dict-like; ``print`` it, or ``.to_dataframe()``).

    Raises:
      ValueError: no parameter in common, a requested one missing, shapes disagree, empty or
        non-finite draws, a non-positive reference sd.
    """
    samples = _samples_of(result_or_draws, "result_or_draws")
    for name, a in samples.items():
        if a.ndim < 2:
            raise ValueError(f"samples[{name!r}] has shape {a.shape}: expected (chain, draw, *shape)")
    shapes = {k: v.shape[2:] for k, v in samples.items()}
    moments, ref_draws, label = _reference_of(reference, shapes)
    ref_names = list(moments if moments is not None else ref_draws)
    if params is None:
        names = [p for p in ref_names if p in samples]
        if not names:
            raise ValueError(f"no parameter in common: the reference has {ref_names}, the draws have {list(samples)}")
    else:
        names = list(params)
        for p in names:
            if p not in ref_names:
                raise ValueError(f"the reference has no {p!r}; it has {ref_names}")
            if p not in samples:
                raise ValueError(f"the draws have no {p!r}; they have {list(samples)}")
    per_param, flat_x, flat_y = {}, [], []
    for p in names:
        x = samples[p].reshape((-1,) + shapes[p])
        if x.shape[0] < 2:
            raise ValueError(f"{p!r}: need at least 2 draws, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise ValueError(f"{p!r}: {int((~np.isfinite(x)).sum())} non-finite draw value(s); drop diverged chains")
        y = None
        if ref_draws is not None:
            y = ref_draws[p]
            if y.shape[1:] != shapes[p] or y.shape[0] < 2:
                raise ValueError(f"reference draws of {p!r} have shape {ref_draws[p].shape}; the draws' site shape is {shapes[p]}")
            if not np.isfinite(y).all():
                raise ValueError(f"reference draws of {p!r} hold non-finite values")
        ref_mean, ref_sd = moments[p] if moments is not None else (y.mean(axis=0), y.std(axis=0, ddof=1))
        if ref_mean.shape != shapes[p] or ref_sd.shape != shapes[p]:
            raise ValueError(f"reference moments of {p!r} have shape {ref_mean.shape}; the draws' site shape is {shapes[p]}")
        if not np.all(ref_sd > 0):
            raise ValueError(f"reference sd of {p!r} is not positive everywhere")
        mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
        per_param[p] = {"mean": mean, "sd": sd, "ref_mean": ref_mean, "ref_sd": ref_sd,
                        "z": np.abs(mean - ref_mean) / ref_sd, "sd_ratio": sd / ref_sd}
        flat_x.append(((x - ref_mean) / ref_sd).reshape(x.shape[0], -1))
        if y is not None:
            flat_y.append(((y - ref_mean) / ref_sd).reshape(y.shape[0], -1))
    zs = np.concatenate([np.ravel(v["z"]) for v in per_param.values()])
    ratios = np.concatenate([np.ravel(v["sd_ratio"]) for v in per_param.values()])
    dist: dict[str, Any] = {}
    num_ref = None
    if ref_draws is not None:
        xs, ys = np.concatenate(flat_x, axis=1), np.concatenate(flat_y, axis=1)
        num_ref = ys.shape[0]
        dist["sliced_w2"] = _dist.w2(xs, ys, num_projections=num_projections, seed=seed)
        xt, yt = _thin(xs, max_draws), _thin(ys, max_draws)
        dist["mmd2"] = _dist.mmd(xt, yt, seed=seed)
        dist["energy"] = _dist.energy_distance(xt, yt)
    return Comparison({
        "per_param": per_param,
        "max_abs_z": float(zs.max()),
        "sd_ratio_min": float(ratios.min()),
        "sd_ratio_max": float(ratios.max()),
        "distances": dist,
        "num_draws": int(flat_x[0].shape[0]),
        "num_ref_draws": num_ref,
        "reference": label,
    })


def _thin(a: np.ndarray, k: int) -> np.ndarray:
    if a.shape[0] <= k:
        return a
    return a[np.linspace(0, a.shape[0] - 1, int(k)).round().astype(int)]
