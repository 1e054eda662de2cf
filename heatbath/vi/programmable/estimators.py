"""Per-choice gradient estimators of programmable VI (Becker et al., PLDI 2024, section 3).

Each random choice v ~ p(v; theta) of an objective program picks how d/dtheta of the
expectation it opens is estimated. With l(v) the rest of the program's value:

- ``reparam()``: pathwise. v = T(eps; theta), eps ~ s: grad E[l(v)] = E[l'(T(eps)) dT/dtheta]
  (NumPyro's ``rsample``; only distributions with ``has_rsample``).
- ``reinforce(baseline=None | "running" | "learned")``: score function,
  grad E[l(v)] = E[grad l(v) + (l(v) - b) grad log p(v; theta)], unbiased for any b that does not
  depend on v (a running average of past values, decay ``decay``, or a learned scalar trained
  on (l - b)^2 along with the parameters).
- ``enum()``: exact sum over a finite support, E[l(v)] = sum_c p(c; theta) l(c) (the rest of
  the program runs once per value; a site's support must be small: ``MAX_ENUM`` values in all).
- ``mvd()``: measure-valued derivative of a Bernoulli(p) choice,
  grad E[l(v)] = E[grad l(v) + (l(1) - l(0)) grad p] (one extra run of the rest of the program
  per element, at the flipped value; the sign form in the paper, l_dot + (-1)^v (l(not v) - l) p_dot,
  is the same number).

Choosing for NumPyro sites: a guide-side annotation ``numpyro.sample("z", d, infer={"estimator":
"reinforce"})``, the handler :func:`estimate` wrapping a guide or model, or
``programmable(..., estimators={"z": "enum"})``. Default (:func:`default_for`): reparam where the
distribution has a reparameterised sampler, enum for a discrete site of at most ``MAX_DEFAULT_ENUM``
values at the objective's top level, reinforce otherwise. Bad choices fail with a ValueError when
the objective is first traced (abstractly, before anything is compiled): an unknown name, enum
on a continuous or non-enumerable site, reparam on a distribution without ``rsample``, mvd on
anything but a Bernoulli.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax.numpy as jnp
from numpyro.primitives import Messenger

__all__ = ["Estimator", "reparam", "reinforce", "enum", "mvd", "as_estimator", "default_for", "check_site",
           "estimate", "NAMES", "MAX_ENUM", "MAX_DEFAULT_ENUM", "MAX_MVD"]

NAMES = ("reparam", "reinforce", "enum", "mvd")
BASELINES = (None, "running", "learned")
MAX_ENUM = 1024  # values of an enumerated site's joint support (all its elements together)
MAX_DEFAULT_ENUM = 16  # the default picks enum only below this
MAX_MVD = 256  # elements of an mvd site (each costs one run of the rest of the program)


class Estimator(NamedTuple):
    """A choice's estimator: ``name`` in :data:`NAMES`; ``baseline`` (reinforce) in
    ``(None, "running", "learned")``, ``decay`` of the running average."""

    name: str
    baseline: Optional[str] = None
    decay: float = 0.9

    def __repr__(self):
        if self.name != "reinforce" or self.baseline is None:
            return f"{self.name}()"
        extra = f", decay={self.decay}" if self.baseline == "running" else ""
        return f"reinforce(baseline={self.baseline!r}{extra})"


def reparam() -> Estimator:
    """Pathwise gradient through NumPyro's reparameterised sampler."""
    return Estimator("reparam")


def reinforce(baseline: Optional[str] = None, decay: float = 0.9) -> Estimator:
    """Score-function gradient (l - b) grad log p(v), b: None, ``"running"`` or ``"learned"``."""
    if baseline not in BASELINES:
        raise ValueError(f"reinforce baseline must be one of {BASELINES}, got {baseline!r}")
    decay = float(decay)
    if not 0.0 <= decay < 1.0 or not math.isfinite(decay):
        raise ValueError(f"reinforce decay must be in [0, 1), got {decay}")
    return Estimator("reinforce", baseline, decay)


def enum() -> Estimator:
    """Exact enumeration of a small discrete support."""
    return Estimator("enum")


def mvd() -> Estimator:
    """Measure-valued derivative of a Bernoulli choice."""
    return Estimator("mvd")


def as_estimator(spec, where: str = "estimator") -> Estimator:
    """An :class:`Estimator` from an Estimator or one of the names in :data:`NAMES`."""
    if isinstance(spec, Estimator):
        return spec
    if isinstance(spec, str):
        if spec not in NAMES:
            raise ValueError(f"unknown gradient estimator {spec!r} for {where}; the estimators are {list(NAMES)} "
                             "(or hb.vi.programmable.reinforce(baseline='running' | 'learned'))")
        return Estimator(spec)
    raise TypeError(f"{where}: an estimator is one of {list(NAMES)} or an Estimator, got {type(spec).__name__}")


def _support_size(fn) -> Optional[int]:
    """Number of joint values of a discrete site (all elements), or None if not enumerable."""
    if not getattr(fn, "has_enumerate_support", False):
        return None
    try:
        per = int(jnp.shape(fn.enumerate_support(expand=False))[0])
    except Exception:  # noqa: BLE001 - not enumerable at this trace
        return None
    elements = math.prod(fn.batch_shape)  # enumerated element by element; an event is one value
    return per**elements


def _is_bernoulli(fn) -> bool:
    from numpyro.distributions import BernoulliLogits, BernoulliProbs

    while hasattr(fn, "base_dist") and not isinstance(fn, (BernoulliProbs, BernoulliLogits)):
        fn = fn.base_dist
    return isinstance(fn, (BernoulliProbs, BernoulliLogits))


def check_site(est: Estimator, fn, name: str, nested: bool) -> None:
    """Refuse an estimator that cannot run on this site (a ValueError naming both)."""
    if est.name == "reparam" and not fn.has_rsample:
        raise ValueError(
            f"site {name!r}: reparam needs a reparameterised sampler, and {type(fn).__name__} has none "
            "(has_rsample is False); use 'reinforce', or 'enum' / 'mvd' for a discrete site")
    if est.name == "enum":
        if not fn.support.is_discrete:
            raise ValueError(f"site {name!r}: enum sums over a discrete support, and {type(fn).__name__} is continuous; "
                             "use 'reparam' or 'reinforce'")
        size = _support_size(fn)
        if size is None:
            raise ValueError(f"site {name!r}: {type(fn).__name__} has no finite support to enumerate; use 'reinforce'")
        if size > MAX_ENUM:
            raise ValueError(f"site {name!r}: enum would run the rest of the objective {size} times (batch shape "
                             f"{fn.batch_shape}); the limit is {MAX_ENUM}: use 'reinforce' or 'mvd'")
        if nested:
            raise ValueError(f"site {name!r}: enum runs the rest of the objective once per value, which is defined "
                             "at the objective's top level only, not inside particles(...)/expectation(...); "
                             "use 'reinforce' there")
    if est.name == "mvd":
        if not _is_bernoulli(fn):
            raise ValueError(f"site {name!r}: mvd is implemented for Bernoulli choices, got {type(fn).__name__}")
        if math.prod(fn.batch_shape) > MAX_MVD:
            raise ValueError(f"site {name!r}: mvd runs the rest of the objective once per element ({fn.batch_shape}); "
                             f"the limit is {MAX_MVD}")
        if nested:
            raise ValueError(f"site {name!r}: mvd runs the rest of the objective at the flipped value, which is "
                             "defined at the objective's top level only, not inside particles(...)/expectation(...)")


def default_for(fn, nested: bool) -> Estimator:
    """reparam if ``fn.has_rsample``; enum for a small discrete support at top level; else reinforce."""
    if fn.has_rsample:
        return reparam()
    if fn.support.is_discrete and not nested:
        size = _support_size(fn)
        if size is not None and size <= MAX_DEFAULT_ENUM:
            return enum()
    return reinforce()


class estimate(Messenger):
    """Effect handler choosing estimators for a NumPyro program's sample sites.

    ``estimate(guide, {"z": "reinforce", "c": hb.vi.programmable.enum()})`` runs ``guide``
    unchanged with the choices recorded in each site's ``infer`` dict (key ``"estimator"``);
    sites not named keep their annotation or the default. Names are checked when the
    objective is traced.
    """

    def __init__(self, fn=None, choices: Optional[dict] = None):
        self.choices = {k: as_estimator(v, f"site {k!r}") for k, v in (choices or {}).items()}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.choices:
            msg["infer"] = {**(msg.get("infer") or {}), "estimator": self.choices[msg["name"]]}
