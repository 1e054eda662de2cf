"""Inputs of the NumPyro bridge: pandas objects and numeric lists become NumPy arrays; sparse
matrices and masked arrays with masked entries are refused with a ``TypeError``."""

from __future__ import annotations

import numpy as np

__all__ = ["convert_input", "pandas_numeric", "as_numeric_list"]


def convert_input(label: str, a):
    """NumPy arrays from pandas objects and unmasked masked arrays; sparse matrices and masked
    arrays with masked entries refused (their structure would be silently dropped)."""
    module = type(a).__module__ or ""
    if module.startswith("scipy.sparse"):
        raise TypeError(
            f"model argument {label!r} is a SciPy sparse matrix ({type(a).__name__}): the NumPyro bridge needs "
            "dense arrays. Pass it dense (.toarray()), or write the log density with "
            "jax.experimental.sparse and hb.models.from_logdensity"
        )
    if isinstance(a, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(a))
        if masked:
            raise TypeError(
                f"model argument {label!r} is a NumPy masked array with {masked} masked value(s): its mask "
                "would be dropped (the masked entries used as data). Drop the masked rows, or pass the filled "
                "array and the mask as two arguments and mask the observations in the model "
                "(numpyro.handlers.mask(mask=...) around the observed site)"
            )
        return np.asarray(np.ma.getdata(a))
    if module.startswith("pandas") and hasattr(a, "to_numpy"):
        kind = type(a).__name__
        try:
            arr = np.asarray(a.to_numpy())
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"model argument {label!r} (a pandas {kind}) could not be converted to a NumPy array: {err}"
            ) from err
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            bad = ""
            if hasattr(a, "dtypes") and hasattr(a.dtypes, "items"):
                cols = [str(c) for c, dt in a.dtypes.items() if not pandas_numeric(dt)]
                bad = f"; non-numeric columns: {cols}" if cols else "; it holds missing values (pd.NA)"
            raise TypeError(
                f"model argument {label!r} is a pandas {kind} that is not numeric (as a NumPy array its dtype is "
                f"{arr.dtype}{bad}): pass numeric columns (e.g. df[cols].to_numpy(float)), one-hot encode "
                "categories and impute or drop missing values"
            )
        return arr
    listed = as_numeric_list(a)
    return a if listed is None else listed


def pandas_numeric(dtype) -> bool:
    try:
        import pandas.api.types as ptypes

        return bool(ptypes.is_numeric_dtype(dtype) or ptypes.is_bool_dtype(dtype))
    except ImportError:  # pragma: no cover - a pandas object without pandas
        return False


def as_numeric_list(a):
    """A numeric NumPy array from a Python list of numbers (or of equal-length lists), else None."""
    if not isinstance(a, list) or not a:
        return None
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError):
        return None
    if arr.ndim >= 1 and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        return arr
    return None
