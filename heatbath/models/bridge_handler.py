"""The NumPyro bridge's effect handler and small helpers (see :mod:`heatbath.models.numpyro_bridge`)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import biject_to
from numpyro.distributions.util import sum_rightmost
from numpyro.primitives import Messenger

__all__ = ["Bridge", "row_frame", "is_array", "short_error"]


class Bridge(Messenger):
    """Substitute latent sites from unconstrained values and point the row plates at the batch."""

    def __init__(self, fn, uparams: Optional[dict], row_plates: frozenset, batch_rows: Optional[int]):
        self.uparams = uparams or {}
        self.row_plates = row_plates if batch_rows is not None else frozenset()
        self.batch_rows = batch_rows
        self.log_jacobian = {}
        self.plate_scale = {}
        super().__init__(fn)

    def process_message(self, msg):
        kind = msg["type"]
        if kind == "sample" and not msg.get("is_observed") and msg["name"] in self.uparams:
            fn = msg["fn"]
            u = self.uparams[msg["name"]]
            transform = biject_to(fn.support)
            value = transform(u)
            log_det = transform.log_abs_det_jacobian(u, value)
            log_det = sum_rightmost(log_det, jnp.ndim(log_det) - jnp.ndim(value) + len(fn.event_shape))
            scale = msg.get("scale")
            self.log_jacobian[msg["name"]] = jnp.sum(log_det) * (1.0 if scale is None else scale)
            msg["value"] = value
        elif kind == "plate" and msg["name"] in self.row_plates:
            size = msg["args"][0]
            msg["value"] = jnp.arange(self.batch_rows)
            msg["args"] = (size, self.batch_rows)
            self.plate_scale[msg["name"]] = size / self.batch_rows
        elif kind == "subsample" and self.row_plates:
            # The rows are already the minibatch: stop the plate from subsampling them again.
            msg["kwargs"] = {**msg["kwargs"], "event_dim": None}


def row_frame(site, row_plates):
    """The frame of the first row plate the site is in, or None."""
    for f in site["cond_indep_stack"]:
        if f.name in row_plates:
            return f
    return None


def is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1


def short_error(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."
