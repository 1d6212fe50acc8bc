"""The step timeline: spans written once complete, prefill overlap with decode summed."""

import io
import json

from drift_sgl.scheduler.timeline import StepTimeline


class FakeClock:
    """A device whose events complete when told, at times the test sets."""

    def __init__(self):
        self.now = 0.0
        self.done_until = float("inf")
        outer = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self, stream):
                self.t = outer.now

            def query(self):
                return self.t <= outer.done_until

            def elapsed_time(self, other):
                return other.t - self.t

        self.Event = Event

    def current_stream(self):
        return "stream"


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_prefill_overlap_counts_decode_steps_launched_later():
    clock, out = FakeClock(), io.StringIO()
    timeline = StepTimeline(out, clock)
    # step 0: decode 0-10, prefill block 0-25 (it runs on through step 1's decode)
    with timeline.span("decode", 2, batch=4):
        clock.now = 10
    clock.now = 0
    with timeline.span("prefill", 2, layers=3):
        clock.now = 25
    clock.done_until = 10  # only decode 0 has finished
    timeline.end_step()
    assert [r["phase"] for r in lines(out)] == ["decode"]
    # step 1: decode 12-22, the prefill block still running beside it
    clock.now = 12
    with timeline.span("decode", 2, batch=4):
        clock.now = 22
    clock.done_until = 30
    timeline.end_step()
    records = lines(out)
    prefill = next(r for r in records if r["phase"] == "prefill")
    assert prefill["overlap_ms"] == 20  # 0-10 and 12-22
    assert prefill["layers"] == 3 and prefill["split"] == 2 and prefill["step"] == 0
    summary = timeline.summary()
    assert summary["decode_ms"] == 20 and summary["prefill_ms"] == 25
    assert summary["prefill_overlapping_decode_ms"] == 20
    assert summary["clock"] == "device" and summary["spans"] == 3


def test_prefill_without_decode_is_written_with_no_overlap():
    clock, out = FakeClock(), io.StringIO()
    timeline = StepTimeline(out, clock)
    with timeline.span("prefill", 0, layers=6):
        clock.now = 5
    timeline.end_step()
    assert lines(out) == [
        {"step": 0, "phase": "prefill", "split": 0, "start_ms": 0, "end_ms": 5, "layers": 6,
         "overlap_ms": 0.0}
    ]  # fmt: skip


def test_host_clock_records_in_order():
    out = io.StringIO()
    timeline = StepTimeline(out)
    with timeline.span("decode", 1, batch=2):
        pass
    with timeline.span("prefill", 1, layers=1):
        pass
    timeline.end_step()
    records = lines(out)
    assert [r["phase"] for r in records] == ["decode", "prefill"]
    assert all(r["end_ms"] >= r["start_ms"] >= 0 for r in records)
    assert timeline.summary()["clock"] == "host"
