"""Faults that tests inject into a real server, to prove the loop's safety nets.

Off unless the environment variable ``DRIFT_SGL_TEST_FAULTS`` is set (the
scheduler processes inherit it from the launcher). Its value is a
comma-separated list of ``kind=argument`` items:

``hold-admission=PREFIX``
    requests whose id starts with PREFIX are never admitted, as if the loop
    had lost them: the liveness watchdog must end them.

Unknown kinds are an error at start-up, so a misspelt fault never turns a
test into one that cannot fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENV_VAR = "DRIFT_SGL_TEST_FAULTS"


@dataclass(frozen=True)
class TestFaults:
    """The faults one server runs with (none by default)."""

    __test__ = False  # not a pytest test class

    #: Requests whose id starts with this are never admitted (None: off).
    hold_admission: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TestFaults:
        """Parse ``DRIFT_SGL_TEST_FAULTS``; raises ``ValueError`` on an unknown item."""
        faults: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in env.get(ENV_VAR, "").split(","))):
            kind, _, argument = item.partition("=")
            if kind != "hold-admission" or not argument:
                raise ValueError(
                    f"{ENV_VAR}: unknown fault {item!r} (known: hold-admission=PREFIX)"
                )
            faults["hold_admission"] = argument
        return cls(**faults)

    def held(self, rid: str) -> bool:
        """Whether admission must skip the request ``rid``."""
        return self.hold_admission is not None and rid.startswith(self.hold_admission)
