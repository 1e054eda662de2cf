"""What :func:`heatbath.tune` returns: the winner, its sampler and the table of every candidate."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from heatbath.drivers import sample

__all__ = ["TuneResult", "candidate_rows"]


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` chose and why.

    Attributes:
      best: the winner's hyperparameters (``step_size``, ``friction`` for SGHMC, ``batch_size``).
      sampler: the winner's sampler, built: ``hb.sample(model, tr.sampler, data=...,
        batch_size=tr.best["batch_size"], ...)``.
      table: one dict per candidate, in grid order: ``candidate``, its hyperparameters,
        ``rounds`` (rounds it ran), ``ksd`` (its score per round), ``steps`` (per round),
        ``seconds`` (per round: its runs and scoring, compile included), ``clock`` (seconds since
        the call began at the end of each of its rounds), ``grad_evals`` (its samplers' per-datum
        gradient evaluations, all chains), ``status`` ("best", "eliminated in round r", "diverged
        in round r").
      budget, budget_kind: the budget and its unit (``"seconds"`` or ``"grads"``).
      rounds: rounds run; ``exhausted``: the budget ran out before one candidate was left.
      wall_time: seconds the call took; ``grad_evals``: the samplers' gradient evaluations, all
        candidates (the scoring's are not counted).
      positions: the winner's unconstrained positions at the end (leading axis chain);
        :meth:`sample` goes on from there.
      target: the Target that was tuned on.
    """

    best: dict
    sampler: Any
    table: list
    family: str
    budget: float
    budget_kind: str
    rounds: int
    exhausted: bool
    wall_time: float
    grad_evals: float
    positions: Any = dataclasses.field(default=None, repr=False)
    target: Any = dataclasses.field(default=None, repr=False)

    def sample(self, num_samples: int, *, seed: int = 1, **kwargs):
        """Go on sampling with the winner from where its chains ended in the tuning (no burn-in
        needed; ``num_chains`` as in the tuning): ``hb.sample(target, self.sampler, batch_size=
        self.best["batch_size"], num_samples=..., init=<those positions>, **kwargs)``."""
        if self.positions is None or self.target is None:
            raise ValueError("this TuneResult keeps no chain positions or target to go on from")
        run_target = dataclasses.replace(self.target, unconstrain=lambda values: values)
        kwargs.setdefault("progress_bar", False)
        kwargs.setdefault("num_warmup", 0)  # the chains go on from the tuning's: they are past their burn-in
        return sample(run_target, self.sampler, batch_size=self.best["batch_size"], num_samples=num_samples,
                      num_chains=int(np.shape(jax.tree.leaves(self.positions)[0])[0]), seed=seed,
                      init=self.positions, **kwargs)

    def rows(self) -> list:
        """Flat rows: hyperparameters, ``rounds``, ``ksd_round1``..., ``steps``, ``seconds``,
        ``grad_evals``, ``status``."""
        width = max(len(r["ksd"]) for r in self.table)
        out = []
        for r in self.table:
            row = {"candidate": r["candidate"], **r["hyperparameters"], "rounds": r["rounds"]}
            row.update({f"ksd_round{j + 1}": (r["ksd"][j] if j < len(r["ksd"]) else float("nan")) for j in range(width)})
            row.update(steps=int(sum(r["steps"])), seconds=float(sum(r["seconds"])), grad_evals=r["grad_evals"],
                       status=r["status"])
            out.append(row)
        return out

    def to_dataframe(self):
        """The table as a pandas DataFrame (index: ``candidate``)."""
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("candidate")

    def __repr__(self) -> str:
        rows = self.rows()
        cols = [c for c in rows[0] if c != "candidate"]
        cells = [[_fmt(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(x[j]) for x in cells)) for j, c in enumerate(cols)]
        unit = "s" if self.budget_kind == "seconds" else " gradient evaluations"
        lines = [f"TuneResult({self.family}: best {self.best}; {len(rows)} candidates, {self.rounds} rounds, "
                 f"budget {self.budget:g}{unit}, took {self.wall_time:.1f} s"
                 + (", budget exhausted before one was left)" if self.exhausted else ")"),
                 "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def candidate_rows(arms, out) -> list:
    rows = []
    for i, arm in enumerate(arms):
        scores = out["scores"][i]
        if i == out["best"]:
            status = "best"
        elif arm.diverged:
            status = f"diverged in round {len(scores)}"
        elif i in out["eliminated"]:
            status = f"eliminated in round {out['eliminated'][i]}"
        else:
            status = "left when the budget ran out"
        rows.append({"candidate": i, "hyperparameters": {**arm.hyper, "batch_size": arm.batch_size},
                     "rounds": len(scores), "ksd": list(scores), "steps": list(arm.round_steps),
                     "seconds": list(arm.round_seconds), "clock": list(arm.clock), "grad_evals": arm.grad_evals,
                     "status": status, "note": arm.note})
    return rows
