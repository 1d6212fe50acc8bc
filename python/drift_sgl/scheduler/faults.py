"""Faults that tests inject into a real server, to prove the loop's safety nets.

Off unless the environment variable ``DRIFT_SGL_TEST_FAULTS`` is set (the
scheduler processes inherit it from the launcher). Its value is a
comma-separated list of ``kind=argument`` items:

``hold-admission=PREFIX``
    requests whose id starts with PREFIX are never admitted, as if the loop
    had lost them: the liveness watchdog must end them.
``raise-in-forward=PREFIX``
    a forward pass (prefill block or decode step) whose batch holds a request
    whose id starts with PREFIX raises after the model ran (its KV written):
    fault isolation must end only that batch's requests and free their KV.

Unknown kinds are an error at start-up, so a misspelt fault never turns a
test into one that cannot fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ENV_VAR = "DRIFT_SGL_TEST_FAULTS"

#: Fault kinds, and the field of ``TestFaults`` each sets.
_KINDS = {"hold-admission": "hold_admission", "raise-in-forward": "raise_in_forward"}


class InjectedFault(RuntimeError):
    """The error ``raise-in-forward`` raises."""


@dataclass(frozen=True)
class TestFaults:
    """The faults one server runs with (none by default)."""

    __test__ = False  # not a pytest test class

    #: Requests whose id starts with this are never admitted (None: off).
    hold_admission: str | None = None
    #: A forward over a request whose id starts with this raises (None: off).
    raise_in_forward: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TestFaults:
        """Parse ``DRIFT_SGL_TEST_FAULTS``; raises ``ValueError`` on an unknown item."""
        faults: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in env.get(ENV_VAR, "").split(","))):
            kind, _, argument = item.partition("=")
            if kind not in _KINDS or not argument:
                known = ", ".join(f"{k}=PREFIX" for k in _KINDS)
                raise ValueError(f"{ENV_VAR}: unknown fault {item!r} (known: {known})")
            faults[_KINDS[kind]] = argument
        return cls(**faults)

    def held(self, rid: str) -> bool:
        """Whether admission must skip the request ``rid``."""
        return self.hold_admission is not None and rid.startswith(self.hold_admission)

    def after_forward(self, rids: Iterable[str]) -> None:
        """Raise ``InjectedFault`` when a forward ran over a marked request."""
        if self.raise_in_forward is None:
            return
        marked = [rid for rid in rids if rid.startswith(self.raise_in_forward)]
        if marked:
            raise InjectedFault(f"test fault injected after the forward of {marked}")
