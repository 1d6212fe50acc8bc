"""SLO flags and classes: parsing, inheritance of the defaults, clear errors."""

import json

import pytest

from drift_sgl.config import DriftConfig, DriftConfigError
from drift_sgl.policy.slo import SloTable, SloTarget, parse_slo_classes

DEFAULT = SloTarget(ttft_ms=1000.0, tpot_ms=50.0)


def test_classes_inherit_the_targets_they_leave_out():
    classes = parse_slo_classes('{"chat": {"ttft_ms": 300}, "batch": {"tpot_ms": 200}}', DEFAULT)
    assert classes["chat"] == SloTarget(ttft_ms=300.0, tpot_ms=50.0)
    assert classes["batch"] == SloTarget(ttft_ms=1000.0, tpot_ms=200.0)


def test_classes_from_a_file(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"agent": {"ttft_ms": 2000, "tpot_ms": 40}}))
    assert parse_slo_classes(str(path), SloTarget()) == {"agent": SloTarget(2000.0, 40.0)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "neither a JSON object nor a file"),
        ("{}", "non-empty object"),
        ('{"a": 5}', "class 'a': expected an object"),
        ('{"a": {"ttft": 5}}', "unknown key"),
        ('{"a": {"ttft_ms": "fast"}}', "must be a number"),
        ('{"a": {"ttft_ms": true}}', "must be a number"),
        ('{"a": {"ttft_ms": -1}}', "positive number"),
        ("no/such/file.json", "neither a JSON object nor a file"),
    ],
)
def test_bad_classes_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_slo_classes(text, SloTarget())


def test_lookup_falls_back_to_the_default_and_says_whether_it_knew_the_name():
    table = SloTable(default=DEFAULT, classes={"chat": SloTarget(ttft_ms=1.0)})
    assert table.lookup(None) == (DEFAULT, True)
    assert table.lookup("chat") == (SloTarget(ttft_ms=1.0), True)
    assert table.lookup("typo") == (DEFAULT, False)


@pytest.mark.parametrize(
    ("fields", "flag"),
    [
        (dict(ttft_slo_ms=0.0), "--drift-ttft-slo-ms"),
        (dict(tpot_slo_ms=-3.0), "--drift-tpot-slo-ms"),
        (dict(tpot_slo_ms=float("nan")), "--drift-tpot-slo-ms"),
        (dict(overload="drop"), "--drift-overload"),
        (dict(policy="fastest"), "--drift-policy"),
        (dict(slo_classes='{"a": {}}'), "--drift-slo-classes"),
    ],
)
def test_config_errors_name_the_flag(fields, flag):
    with pytest.raises(DriftConfigError) as info:
        DriftConfig(**fields)
    assert info.value.flag == flag


def test_config_builds_the_table_from_the_flags():
    config = DriftConfig(ttft_slo_ms=800.0, slo_classes='{"x": {"tpot_ms": 30}}')
    table = config.slo_table()
    assert table.default == SloTarget(ttft_ms=800.0)
    assert table.classes["x"] == SloTarget(ttft_ms=800.0, tpot_ms=30.0)


def test_slo_flags_parse_from_the_command_line():
    from drift_sgl.launch_server import split_argv

    argv = [
        "--model-path", "/m",
        "--drift-ttft-slo-ms", "750",
        "--drift-tpot-slo-ms=40.5",
        "--drift-slo-classes", '{"bulk": {"ttft_ms": 60000}}',
        "--drift-overload", "shed",
        "--drift-policy", "layer-budget",
    ]  # fmt: skip
    config, rest = split_argv(argv)
    assert rest == ["--model-path", "/m"]
    assert (config.ttft_slo_ms, config.tpot_slo_ms) == (750.0, 40.5)
    assert config.overload == "shed" and config.policy == "layer-budget"
    assert config.slo_table().classes["bulk"] == SloTarget(ttft_ms=60000.0, tpot_ms=40.5)
