"""The one progress display: a tqdm bar over training steps, or nothing (``--no-progress``)."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress"]


class Progress:
    """A bar of ``total`` steps, created by :meth:`start` (at the step a run resumes from).

    Use as a context manager, so the bar is closed however the run ends.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, position: int = 0) -> None:
        self.total, self.desc, self.enabled, self.position = total, desc, enabled, position
        self.bar: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def start(self, step: int = 0) -> None:
        if self.enabled and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=step, unit="step", desc=self.desc,
                            position=self.position, dynamic_ncols=True, smoothing=0.1)

    def advance_to(self, step: int, **postfix: str) -> None:
        """Move the bar to ``step``; ``postfix`` (e.g. the latest accuracy) is shown beside it."""
        if self.bar is None:
            return
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self.bar.n)
