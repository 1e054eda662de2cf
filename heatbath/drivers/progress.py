"""The progress bar: host side, fed by callbacks from inside the compiled scan (as NumPyro does)."""

from __future__ import annotations

__all__ = ["Progress", "tick"]

_ACTIVE: list = [None]


def tick(n):
    """Host callback of the compiled chunks: feeds whichever progress bar is active now."""
    bar = _ACTIVE[0]
    if bar is not None:
        bar.update(n)


class Progress:
    """A tqdm bar over ``total`` steps (disabled: a no-op); ``every`` steps between ticks."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.enabled = enabled and total > 0
        self.bar = None
        self.total = total
        self.desc = desc
        self.every = max(1, total // 50)

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, leave=True, dynamic_ncols=True)
        _ACTIVE[0] = self
        return self

    def update(self, n):
        if self.bar is not None:
            self.bar.update(int(n))

    def set(self, n):
        """Move the bar to ``n`` steps done (after each chunk, so it never drifts)."""
        if self.bar is not None and int(n) != self.bar.n:
            self.bar.update(int(n) - self.bar.n)

    def advance_to(self, n):
        """Move the bar forward to ``n`` steps done, never back (a chunk still running ticks it)."""
        if self.bar is not None and int(n) > self.bar.n:
            self.bar.update(int(n) - self.bar.n)

    def __exit__(self, *exc):
        _ACTIVE[0] = None
        if self.bar is not None:
            self.bar.close()
