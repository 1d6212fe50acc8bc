"""The green-context backend's CPU-side logic: SM arithmetic, --drift-splits, the
stream-pair ordering (on torch's CPU stream shims), the fallback, the probe verdicts."""

import pytest
import torch

from drift_sgl.partition import (
    GreenContextUnavailable,
    SmSplit,
    StreamPair,
    StreamPairBackend,
    TimeMultiplexedBackend,
    create_partition_backend,
)
from drift_sgl.partition.probe import probe_split
from drift_sgl.partition.sm_layout import (
    SmGranularity,
    auto_pairs,
    driver_granularity,
    grant,
    granted_pairs,
    granularity_for,
    parse_splits,
    split_table,
)

HOPPER = granularity_for(9, 0)
AMPERE = granularity_for(8, 0)

# --- granularity ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "expected"),
    [((6, 1), (1, 1)), ((7, 0), (2, 2)), ((8, 0), (4, 2)), ((8, 9), (4, 2)), ((9, 0), (8, 8))],
)
def test_table_granularity(cc, expected):
    g = granularity_for(*cc)
    assert (g.min_count, g.multiple) == expected
    assert g.source == "table"


@pytest.mark.parametrize("cc", [(10, 0), (12, 0)])
def test_blackwell_does_not_raise(cc):
    # Upstream's table raises ValueError for compute capability >= 10.
    assert granularity_for(*cc).multiple == 8


def test_pre_pascal_has_no_green_contexts():
    with pytest.raises(ValueError, match="no green contexts"):
        granularity_for(5, 2)


def test_driver_figures_win_over_the_table():
    g = driver_granularity(16, 8, HOPPER)
    assert (g.min_count, g.multiple, g.source) == (16, 8, "driver")
    assert driver_granularity(0, 0, HOPPER) is HOPPER


@pytest.mark.parametrize(("request_", "granted"), [(1, 8), (8, 8), (9, 16), (16, 16), (17, 24)])
def test_round_up_on_hopper(request_, granted):
    assert HOPPER.round_up(request_) == granted


# --- auto splits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "g"), [(132, HOPPER), (108, AMPERE), (148, HOPPER), (78, HOPPER)]
)
def test_auto_pairs_fit_and_ascend(total, g):
    pairs = auto_pairs(total, g)
    assert len(pairs) >= 3
    decodes = [d for _, d in pairs]
    assert decodes == sorted(set(decodes))
    for prefill, decode in pairs:
        assert prefill + decode == total
        assert decode % g.multiple == 0 and decode >= g.min_count
        assert prefill >= g.min_count


def test_auto_pairs_on_h100():
    assert auto_pairs(132, HOPPER) == (
        (116, 16),
        (100, 32),
        (84, 48),
        (68, 64),
        (52, 80),
        (36, 96),
    )


def test_auto_pairs_include_decode_heavy_splits():
    # Upstream's divide_sm forces prefill >= decode; large decode batches need more.
    assert any(d > p for p, d in auto_pairs(132, HOPPER))


# --- --drift-splits ---------------------------------------------------------


def test_parse_auto():
    assert parse_splits("auto") is None
    assert parse_splits(" auto ") is None


def test_parse_pairs_sorted_by_decode():
    assert parse_splits("68:64, 116:16,100:32") == ((116, 16), (100, 32), (68, 64))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "not PREFILL_SMS:DECODE_SMS"),
        ("100", "not PREFILL_SMS:DECODE_SMS"),
        ("100:32:1", "not PREFILL_SMS:DECODE_SMS"),
        ("a:b", "integers"),
        ("100:0", "both phases"),
        ("0:132", "both phases"),
        ("-8:16", "both phases"),
        ("100:32,90:32", "same number"),
    ],
)
def test_parse_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_splits(spec)


def test_grant_rounds_decode_and_gives_prefill_the_rest():
    assert grant((116, 16), 132, HOPPER) == (116, 16)
    assert grant((120, 12), 132, HOPPER) == (116, 16)  # decode rounded up, prefill shrinks
    assert grant((64, 16), 132, HOPPER) == (64, 16)  # fewer asked: a rounded group
    assert grant((60, 16), 132, HOPPER) == (64, 16)


def test_grant_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="leaves prefill"):
        grant((8, 128), 132, HOPPER)


def test_granted_pairs_drop_duplicates_after_rounding():
    assert granted_pairs(((120, 12), (116, 16), (68, 64)), 132, HOPPER) == ((116, 16), (68, 64))


def test_split_table_convention():
    table = split_table(132, ((116, 16), (68, 64)))
    assert table[0] == SmSplit(132, 0)
    assert table[-1] == SmSplit(0, 132)
    assert table[1:-1] == (SmSplit(116, 16), SmSplit(68, 64))


# --- the stream-pair backend, on torch's CPU stream shims --------------------


def cpu_backend(closed: list | None = None) -> StreamPairBackend:
    splits = split_table(8, ((6, 2), (4, 4)))
    pairs = [StreamPair(torch.cpu.Stream(), torch.cpu.Stream(), s) for s in splits]
    return StreamPairBackend(
        "cpu-pairs",
        8,
        pairs,
        streams=torch.cpu,
        close=None if closed is None else (lambda: closed.append(True)),
    )


def test_stream_pair_backend_table_and_flags():
    backend = cpu_backend()
    assert backend.concurrent is True
    assert backend.total_units == 8
    assert [(s.prefill_units, s.decode_units) for s in backend.splits] == [
        (8, 0),
        (6, 2),
        (4, 4),
        (0, 8),
    ]
    assert "concurrent" in backend.describe()


def test_scopes_make_the_split_stream_current():
    backend = cpu_backend()
    for index in range(len(backend.splits)):
        pair = backend.pair(index)
        with backend.decode_scope(index):
            assert torch.cpu.current_stream() is pair.decode
        with backend.prefill_scope(index):
            assert torch.cpu.current_stream() is pair.prefill
        assert torch.cpu.current_stream() is not pair.prefill
        event = backend.record_prefill_event(index)
        assert event.query() is True
        event.synchronize()
        backend.wait_decode(index)


def test_scope_restores_stream_on_error():
    backend = cpu_backend()
    before = torch.cpu.current_stream()
    with pytest.raises(RuntimeError, match="boom"), backend.prefill_scope(1):
        raise RuntimeError("boom")
    assert torch.cpu.current_stream() is before


@pytest.mark.parametrize("index", [-1, 4])
def test_stream_pair_index_checked(index):
    backend = cpu_backend()
    for method in (backend.decode_scope, backend.prefill_scope, backend.record_prefill_event):
        with pytest.raises(IndexError):
            method(index)


def test_close_runs_once():
    closed: list = []
    backend = cpu_backend(closed)
    backend.close()
    backend.close()
    assert closed == [True]


def test_stream_pair_backend_rejects_a_table_against_convention():
    pairs = [StreamPair(None, None, s) for s in (SmSplit(4, 4), SmSplit(6, 2), SmSplit(0, 8))]
    with pytest.raises(ValueError, match="prefill only"):
        StreamPairBackend("bad", 8, pairs, streams=torch.cpu)
    with pytest.raises(ValueError, match="mixed"):
        StreamPairBackend("bad", 8, pairs[:2], streams=torch.cpu)


# --- choosing the backend -----------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without a GPU")
def test_auto_on_cuda_without_green_contexts_falls_back_with_reason():
    choice = create_partition_backend("auto", "cuda", 132, splits="116:16")
    assert isinstance(choice.backend, TimeMultiplexedBackend)
    assert choice.fallback is True
    assert "green contexts unavailable" in choice.reason
    assert "no CUDA device" in choice.reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_green_ctx_requested_without_gpu_raises():
    with pytest.raises(GreenContextUnavailable, match="no CUDA device"):
        create_partition_backend("green-ctx", "cuda", 132)
    with pytest.raises(GreenContextUnavailable, match="NVIDIA GPU"):
        create_partition_backend("green-ctx", "cpu", 2)


def test_bad_splits_spec_raises_before_anything_is_built():
    with pytest.raises(ValueError, match="PREFILL_SMS"):
        create_partition_backend("auto", "cpu", 2, splits="16")


# --- the probe's verdicts ------------------------------------------------------


def fake_probe(sm_sets: dict[int, list[int]]):
    def probe(stream: int, blocks: int, spin_ns: int) -> list[int]:
        assert blocks == 8 * 16 and spin_ns > 0
        return sm_sets[stream]

    return probe


def test_probe_confined_disjoint_split_is_ok():
    probe = fake_probe({1: list(range(0, 12)) * 3, 2: [12, 13, 14, 15]})
    result = probe_split(probe, SmSplit(12, 4), 1, 2, total_sms=16)
    assert result.ok and result.disjoint
    assert result.prefill.covered and result.decode.confined
    report = result.as_dict()
    assert report["decode"]["seen_sms"] == 4 and report["ok"] is True


def test_probe_flags_overlap_and_overflow():
    probe = fake_probe({1: list(range(0, 12)), 2: [11, 12, 13, 14, 15]})
    result = probe_split(probe, SmSplit(12, 4), 1, 2, total_sms=16)
    assert not result.disjoint
    assert not result.decode.confined
    assert result.ok is False


def test_probe_flags_uncovered_partition():
    probe = fake_probe({1: list(range(0, 8)), 2: [12, 13, 14, 15]})
    result = probe_split(probe, SmSplit(12, 4), 1, 2, total_sms=16)
    assert result.disjoint and result.prefill.confined
    assert not result.prefill.covered and not result.ok


def test_probe_skips_a_phase_without_sms():
    probe = fake_probe({1: list(range(16))})
    result = probe_split(probe, SmSplit(16, 0), 1, 2, total_sms=16)
    assert result.decode is None and result.ok


def test_granularity_rejects_nonsense():
    with pytest.raises(ValueError):
        SmGranularity(0, 8)


def test_probe_counts_unwritten_blocks_apart_from_sms():
    from drift_sgl.partition.probe import NO_SMID

    probe = fake_probe({1: [*range(12), NO_SMID], 2: [12, 13, 14, 15]})
    result = probe_split(probe, SmSplit(12, 4), 1, 2, total_sms=16)
    assert result.prefill.seen_sms == tuple(range(12))  # the marker is not an SM
    assert result.prefill.unwritten_blocks == 1
    assert result.prefill.confined and not result.prefill.covered and not result.ok


def test_backend_device_check_shared_by_launcher_and_scheduler():
    from drift_sgl.partition import check_backend_device

    check_backend_device("green-ctx", "cuda")
    check_backend_device("cpu-streams", "cpu")
    check_backend_device("auto", "cpu")
    with pytest.raises(GreenContextUnavailable, match="this server runs on cpu"):
        check_backend_device("green-ctx", "cpu")
    with pytest.raises(ValueError, match="runs on a CPU device"):
        check_backend_device("cpu-streams", "cuda")
    with pytest.raises(ValueError, match="runs on a CPU device"):
        create_partition_backend("cpu-streams", "cuda", 132)
