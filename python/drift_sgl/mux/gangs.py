"""The prefill gang in flight and the one it pre-empted."""

from __future__ import annotations

from typing import Generic, TypeVar

G = TypeVar("G")


class GangSlots(Generic[G]):
    """At most two gangs: the one running and one paused at a layer boundary.

    A gang admitted while another runs pre-empts it: the running one is paused
    and resumes, at the layer it reached, when the new one leaves. Pre-emption
    does not nest (the planner never asks for it with a gang paused).
    """

    def __init__(self) -> None:
        self.current: G | None = None
        self.paused: G | None = None

    def __bool__(self) -> bool:
        return self.current is not None or self.paused is not None

    def __iter__(self):
        """The gangs holding KV: the running one, then the paused one."""
        return iter(g for g in (self.current, self.paused) if g is not None)

    def start(self, gang: G) -> None:
        """``gang`` runs from now; a gang running until now is paused."""
        if self.current is not None:
            if self.paused is not None:
                raise RuntimeError("pre-emption does not nest: a gang is already paused")
            self.paused = self.current
        self.current = gang

    def finish(self) -> G:
        """The running gang leaves (merged, or failed); a paused one resumes."""
        gang = self.current
        if gang is None:
            raise RuntimeError("no gang is running")
        self.current, self.paused = self.paused, None
        return gang

    def resume(self) -> None:
        """With no gang running, the paused one (if any) runs again."""
        if self.current is None:
            self.current, self.paused = self.paused, None
