"""Tests of gating.diagnostics: located messages, collected and raised all at once."""

import pytest

from gating.diagnostics import Collector, ConfigError, Diagnostic, Mark, did_you_mean


def test_mark_prints_as_file_line_column():
    assert str(Mark("pipelines/rdo.yaml", 12, 7)) == "pipelines/rdo.yaml:12:7"


def test_mark_defaults_to_the_start_of_the_file():
    assert str(Mark("gating.yaml")) == "gating.yaml:1:1"


def test_marks_sort_by_file_then_line_then_column():
    marks = [Mark("b", 1, 1), Mark("a", 10, 1), Mark("a", 2, 30), Mark("a", 2, 4)]
    assert sorted(marks) == [Mark("a", 2, 4), Mark("a", 2, 30), Mark("a", 10, 1), Mark("b", 1, 1)]


def test_lines_sort_numerically_not_as_text():
    assert Mark("f", 9, 1) < Mark("f", 10, 1)


def test_diagnostic_prints_mark_then_message():
    d = Diagnostic(Mark("f.yaml", 3, 5), "unknown key 'x'")
    assert str(d) == "f.yaml:3:5: unknown key 'x'"


def test_a_diagnostic_stays_one_line_whatever_the_file_held():
    # a key such as "x\nother.yaml:1:1: fake" must not print a second, forged diagnostic
    d = Diagnostic(Mark("f.yaml", 3, 5), "job name 'x\nother.yaml:1:1: fake\r\t\x00\u2028'")
    assert str(d) == "f.yaml:3:5: job name 'x\\nother.yaml:1:1: fake\\r\\t\\x00\\u2028'"
    assert str(ConfigError([d])).count("\n") == 0


def test_config_error_sorts_its_diagnostics_by_place():
    err = ConfigError(
        [
            Diagnostic(Mark("f", 9, 1), "third"),
            Diagnostic(Mark("f", 2, 8), "second"),
            Diagnostic(Mark("f", 2, 1), "first"),
        ]
    )
    assert err.messages == ["f:2:1: first", "f:2:8: second", "f:9:1: third"]


def test_config_error_drops_repeated_diagnostics():
    d = Diagnostic(Mark("f", 1, 1), "same")
    assert ConfigError([d, d, d]).messages == ["f:1:1: same"]


def test_config_error_text_is_one_line_per_diagnostic():
    err = ConfigError([Diagnostic(Mark("f", 2, 1), "b"), Diagnostic(Mark("f", 1, 1), "a")])
    assert str(err) == "f:1:1: a\nf:2:1: b"


def test_empty_collector_is_false_and_check_does_not_raise():
    errors = Collector()
    assert not errors
    errors.check()


def test_collector_check_raises_every_error_at_once():
    errors = Collector()
    errors.error(Mark("f", 5, 1), "late")
    errors.error(Mark("f", 1, 1), "early")
    assert errors
    with pytest.raises(ConfigError) as exc:
        errors.check()
    assert exc.value.messages == ["f:1:1: early", "f:5:1: late"]


def test_collector_extend_takes_a_config_error_or_another_collector():
    errors = Collector()
    other = Collector()
    other.error(Mark("a"), "from a collector")
    errors.extend(other)
    errors.extend(ConfigError([Diagnostic(Mark("b"), "from an exception")]))
    with pytest.raises(ConfigError) as exc:
        errors.check()
    assert exc.value.messages == ["a:1:1: from a collector", "b:1:1: from an exception"]


def test_did_you_mean_names_the_closest_choice():
    assert did_you_mean("architecture", ["architectures", "series", "run"]) == (
        "; did you mean 'architectures'?"
    )


def test_did_you_mean_is_empty_when_nothing_is_close():
    assert did_you_mean("zzz", ["architectures", "series"]) == ""


def test_did_you_mean_does_not_depend_on_the_order_of_choices():
    assert did_you_mean("gat", ["gate", "get"]) == did_you_mean("gat", ["get", "gate"])
