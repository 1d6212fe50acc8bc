"""The loop's liveness check: work that waits while nothing runs must not wait forever.

SGLang's own loop has no such check: a request its admission never takes
(its KV need exceeds the pool, say) keeps the scheduler polling at full speed
and the client waiting. drift's loop adds a policy between the waiting queue
and SGLang's admission, which is one more way to leave work unstarted, so the
scheduler feeds this watchdog once per step: whether work was waiting and
whether anything was launched or merged. A stall that lasts ``timeout_s``
(and at least ``min_steps`` steps, so one slow step is never a stall) is
reported once; the scheduler then aborts the waiting requests with a message
that says why, and logs their ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StallWatchdog:
    """Counts consecutive steps in which work waited and nothing ran."""

    #: Seconds of stall before ``observe`` reports one.
    timeout_s: float
    #: Stalled steps needed besides the time (a single long step is not a stall).
    min_steps: int = 100
    _since_s: float | None = None
    _steps: int = 0

    def observe(self, now_s: float, work_waiting: bool, progressed: bool) -> bool:
        """Record one step; True when the stall has just reached its bound.

        Args:
            now_s: a monotonic clock, in seconds.
            work_waiting: requests wait to be started (or a prefill to complete).
            progressed: this step launched a decode step or a prefill block,
                started a gang or merged one.
        """
        if progressed or not work_waiting:
            self.reset()
            return False
        if self._since_s is None:
            self._since_s = now_s
        self._steps += 1
        if self._steps >= self.min_steps and now_s - self._since_s >= self.timeout_s:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self._since_s = None
        self._steps = 0

    @property
    def stalled_steps(self) -> int:
        return self._steps
