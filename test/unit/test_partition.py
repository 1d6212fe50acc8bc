"""Partition backends: the split table convention, scopes, events and selection."""

import pytest

from drift_sgl.partition import (
    PartitionBackend,
    PhaseEvent,
    SmSplit,
    TimeMultiplexedBackend,
    create_partition_backend,
)


@pytest.mark.parametrize("units", [1, 4, 132])
def test_time_mux_split_table_follows_convention(units):
    backend = TimeMultiplexedBackend(units)
    splits = backend.splits
    assert backend.total_units == units
    assert len(splits) >= 3
    # index 0: prefill only, all units
    assert splits[0] == SmSplit(prefill_units=units, decode_units=0)
    # last: decode only, all units
    assert splits[-1] == SmSplit(prefill_units=0, decode_units=units)
    # mixed splits give units to both phases, decode share ascending
    mixed = splits[1:-1]
    assert all(s.prefill_units > 0 and s.decode_units > 0 for s in mixed)
    assert [s.decode_units for s in mixed] == sorted(s.decode_units for s in mixed)
    assert all(s.prefill_units <= units and s.decode_units <= units for s in splits)


def test_time_mux_is_not_concurrent():
    backend = TimeMultiplexedBackend(2)
    assert isinstance(backend, PartitionBackend)
    assert backend.name == "time-mux"
    assert backend.concurrent is False


def test_scopes_are_usable_context_managers():
    backend = TimeMultiplexedBackend(4)
    trace = []
    for index in range(len(backend.splits)):
        with backend.decode_scope(index):
            trace.append(("decode", index))
        with backend.prefill_scope(index):
            trace.append(("prefill", index))
        backend.wait_decode(index)
    assert len(trace) == 2 * len(backend.splits)


def test_scope_does_not_swallow_exceptions():
    backend = TimeMultiplexedBackend(4)
    with pytest.raises(RuntimeError, match="boom"), backend.prefill_scope(1):
        raise RuntimeError("boom")


def test_prefill_event_is_complete():
    backend = TimeMultiplexedBackend(4)
    for index in range(len(backend.splits)):
        event = backend.record_prefill_event(index)
        assert isinstance(event, PhaseEvent)
        assert event.query() is True
        assert event.synchronize() is None
        assert event.query() is True


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_out_of_range_split_index_raises(index):
    backend = TimeMultiplexedBackend(4)
    assert len(backend.splits) == 3
    for method in (
        backend.decode_scope,
        backend.prefill_scope,
        backend.record_prefill_event,
        backend.wait_decode,
    ):
        with pytest.raises(IndexError):
            method(index)


@pytest.mark.parametrize("units", [0, -1])
def test_time_mux_rejects_no_units(units):
    with pytest.raises(ValueError, match="total_units"):
        TimeMultiplexedBackend(units)


@pytest.mark.parametrize(("prefill", "decode"), [(-1, 4), (4, -1), (0, 0), (-2, -2)])
def test_sm_split_rejects_invalid(prefill, decode):
    with pytest.raises(ValueError):
        SmSplit(prefill_units=prefill, decode_units=decode)


@pytest.mark.parametrize(("prefill", "decode"), [(0, 1), (1, 0), (3, 5)])
def test_sm_split_accepts_valid(prefill, decode):
    split = SmSplit(prefill_units=prefill, decode_units=decode)
    assert (split.prefill_units, split.decode_units) == (prefill, decode)


def test_auto_on_cpu_picks_time_mux():
    choice = create_partition_backend("auto", "cpu", 4)
    assert isinstance(choice.backend, TimeMultiplexedBackend)
    assert choice.backend.total_units == 4
    assert "CPU" in choice.reason


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_time_mux_requested(device):
    choice = create_partition_backend("time-mux", device, 3)
    assert isinstance(choice.backend, TimeMultiplexedBackend)
    assert choice.backend.total_units == 3
    assert choice.reason


@pytest.mark.parametrize("name", ["green", "", "TIME-MUX", "timemux"])
def test_unknown_backend_name_raises(name):
    with pytest.raises(ValueError, match="unknown partition backend"):
        create_partition_backend(name, "cpu", 4)


def test_describe_names_backend_and_table():
    text = TimeMultiplexedBackend(4).describe()
    assert "time-mux" in text
    assert "time-multiplexed" in text
    assert "4 units" in text
    assert "4:0" in text and "0:4" in text
    assert "\n" not in text


def test_device_units_on_cpu_is_the_thread_count():
    import torch

    from drift_sgl.partition import device_units

    assert device_units("cpu") == torch.get_num_threads()
