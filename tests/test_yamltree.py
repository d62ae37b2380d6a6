"""Tests of gating.yamltree: YAML loaded into located nodes, and the typed Reader."""

import datetime
import textwrap
import time

import pytest
from hypothesis import given

from gating.diagnostics import Collector, Mark
from gating.yamltree import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NUMBER_CHARS,
    MAX_VALUES,
    Node,
    Reader,
    describe,
    load,
)
from tests.support.badinput import BAD_INPUT, any_text, assert_located


def parse(text: str, filename: str = "f.yaml"):
    errors = Collector()
    node = load(textwrap.dedent(text), filename, errors)
    return node, [str(d) for d in errors.diagnostics]


def node(value):
    return Node(value, Mark("f.yaml", 4, 2))


# -- load --------------------------------------------------------------------


def test_values_keep_their_line_and_column_counting_from_one():
    root, errors = parse(
        """\
        jobs:
          build:
            architectures: [x86_64, aarch64]
        """
    )
    assert errors == []
    build = root.value["jobs"].value["build"]
    arches = build.value["architectures"]
    assert root.mark == Mark("f.yaml", 1, 1)
    assert arches.mark == Mark("f.yaml", 3, 20)
    assert [a.mark for a in arches.value] == [Mark("f.yaml", 3, 21), Mark("f.yaml", 3, 29)]


def test_key_marks_say_where_each_key_was_written():
    root, _ = parse("a: 1\nbb:\n  c: 2\n")
    assert root.key_mark("a") == Mark("f.yaml", 1, 1)
    assert root.key_mark("bb") == Mark("f.yaml", 2, 1)
    assert root.value["bb"].key_mark("c") == Mark("f.yaml", 3, 3)


def test_key_mark_of_a_missing_key_is_the_mapping_itself():
    root, _ = parse("x: 1\n")
    assert root.key_mark("nope") == root.mark


def test_mappings_keep_file_order():
    root, _ = parse("zeta: 1\nalpha: 2\nmid: 3\n")
    assert list(root.value) == ["zeta", "alpha", "mid"]


def test_plain_returns_dicts_lists_and_scalars_without_marks():
    root, _ = parse("a: [1, two, {b: null}]\nc: true\n")
    assert root.plain() == {"a": [1, "two", {"b": None}], "c": True}


def test_node_kind_properties():
    root, _ = parse("m: {}\ns: []\nv: 1\n")
    m, s, v = (root.value[k] for k in "msv")
    assert (m.is_map, m.is_seq, m.is_scalar) == (True, False, False)
    assert (s.is_map, s.is_seq, s.is_scalar) == (False, True, False)
    assert (v.is_map, v.is_seq, v.is_scalar) == (False, False, True)
    assert list(v.items()) == []


def test_bytes_are_decoded_as_utf8():
    errors = Collector()
    root = load("name: café\n".encode(), "f.yaml", errors)
    assert root.plain() == {"name": "café"}


def test_empty_document_is_a_null_node_at_the_start_of_the_file():
    root, errors = parse("# only a comment\n")
    assert errors == []
    assert root == Node(None, Mark("f.yaml", 1, 1))


def test_duplicate_key_is_an_error_naming_the_first_definition():
    root, errors = parse(
        """\
        run: make
        series: el9
        run: make check
        """
    )
    assert errors == ["f.yaml:3:1: duplicate key 'run' (first defined at line 1, column 1)"]
    assert root.plain() == {"run": "make", "series": "el9"}


def test_duplicate_keys_are_found_at_any_depth():
    _, errors = parse("jobs:\n  a:\n    x: 1\n    x: 2\n")
    assert errors == ["f.yaml:4:5: duplicate key 'x' (first defined at line 3, column 5)"]


def test_non_string_keys_are_errors_saying_what_they_are():
    _, errors = parse("1: one\nyes: two\n[a]: three\nok: four\n")
    assert errors == [
        "f.yaml:1:1: keys must be strings, got an integer (1)",
        "f.yaml:2:1: keys must be strings, got a boolean (true)",
        "f.yaml:3:1: keys must be strings, got a list",
    ]


def test_merge_keys_merge_as_pyyaml_does_with_explicit_keys_winning():
    root, errors = parse(
        """\
        base: &base {series: el9, run: make}
        other: &other {series: el8, timeout: 5}
        job:
          <<: [*base, *other]
          run: make check
        """
    )
    assert errors == []
    job = root.value["job"]
    assert job.plain() == {"series": "el9", "timeout": 5, "run": "make check"}
    assert job.key_mark("run") == Mark("f.yaml", 5, 3)
    assert job.key_mark("series") == Mark("f.yaml", 1, 14)


def test_merge_key_of_a_scalar_is_an_error():
    _, errors = parse("job:\n  <<: 3\n  run: make\n")
    assert errors == ["f.yaml:2:7: merge key ('<<') expects a mapping or a list of mappings"]


def test_aliases_are_expanded():
    root, errors = parse("a: &x [1, 2]\nb: *x\n")
    assert errors == []
    assert root.plain() == {"a": [1, 2], "b": [1, 2]}


def test_alias_bomb_is_refused_instead_of_expanded():
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 7):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    root, errors = parse("\n".join(lines) + "\n")
    assert root is None
    assert errors == [
        f"f.yaml:1:1: file has more than {MAX_VALUES} values (counting each use of an alias)"
    ]


TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)"


def test_deep_nesting_is_an_error_at_the_first_list_too_deep_not_a_crash():
    # 1,000 levels: more than libyaml's limit, so the pure-Python parser's recursion fails
    root, errors = parse("a: " + "[" * 1000 + "]" * 1000 + "\n")
    assert root is None
    assert errors == [f"f.yaml:1:{3 + MAX_DEPTH}: {TOO_DEEP}"]


def test_deep_block_nesting_is_an_error_at_its_line():
    text = "a:\n" + "".join(" " * (2 * i) + "- \n" for i in range(1000))
    root, errors = parse(text)
    assert root is None
    assert [e.split(":")[:2] for e in errors] == [["f.yaml", str(MAX_DEPTH + 1)]]
    assert errors[0].endswith(TOO_DEEP)


def test_nesting_a_little_too_deep_is_refused_where_it_happens_and_the_rest_kept():
    root, errors = parse("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\nb: 1\n")
    assert errors == [f"f.yaml:1:{3 + MAX_DEPTH}: {TOO_DEEP}"]
    assert root.value["b"].value == 1


def test_nesting_up_to_the_limit_loads():
    root, errors = parse("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    assert errors == []


def test_nesting_through_merge_keys_and_aliases_counts_too():
    # fine where it is written (the root, d and its mapping: the lists start at level 3);
    # one level deeper where it is used, under e's merge key and in f's list
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    _, errors = parse(f"d: &d {{k: {inner}}}\ne: {{<<: *d}}\nf: [*d]\n")
    last = len("d: &d {k: ") + MAX_DEPTH - 2  # the column of the innermost list
    assert errors == [f"f.yaml:1:{last}: {TOO_DEEP}"] * 2


def test_syntax_error_says_where_and_where_the_enclosing_block_starts():
    root, errors = parse(
        """\
        jobs:
          build:
            architectures: [x86_64]
           run: make
        """
    )
    assert root is None
    assert errors == [
        "f.yaml:4:4: YAML syntax error: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping that starts at line 2, column 3); check the indentation"
    ]


def test_unterminated_quote_points_at_where_the_string_started():
    _, errors = parse('a: "never closed\nb: 2\n')
    assert errors == [
        "f.yaml:3:1: YAML syntax error: found unexpected end of stream "
        "(while scanning a quoted scalar that starts at line 1, column 4)"
    ]


def test_tab_indentation_is_a_syntax_error():
    _, errors = parse("a:\n\tb: 1\n")
    assert errors == [
        "f.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"
    ]


def test_a_second_document_is_an_error():
    _, errors = parse("a: 1\n---\nb: 2\n")
    assert errors == [
        "f.yaml:2:1: YAML syntax error: expected a single document in the stream, "
        "but found another document"
    ]


def test_stray_bracket_is_a_syntax_error_without_an_indentation_hint():
    _, errors = parse("a: [1, 2]]\n")
    assert errors == [
        "f.yaml:1:10: YAML syntax error: expected <block end>, but found ']' "
        "(while parsing a block mapping that starts at line 1, column 1)"
    ]


def test_list_item_indented_less_than_its_siblings_gets_the_indentation_hint():
    _, errors = parse("a:\n  b:\n    - 1\n   - 2\n")
    assert errors == [
        "f.yaml:4:4: YAML syntax error: expected <block end>, but found "
        "'<block sequence start>' (while parsing a block mapping that starts at line 2, "
        "column 3); check the indentation"
    ]


def test_duplicate_anchor_names_the_first_definition():
    _, errors = parse("a: &x 1\nb: &x 2\n")
    assert errors == [
        "f.yaml:2:4: YAML syntax error: duplicate anchor 'x' (first defined at line 1, column 4)"
    ]


def test_undefined_alias_is_a_syntax_error():
    _, errors = parse("a: *nope\n")
    assert errors == ["f.yaml:1:4: YAML syntax error: found undefined alias 'nope'"]


def test_unknown_tags_are_bad_values_not_python_objects():
    root, errors = parse("a: !!python/object/apply:os.system [touch pwned]\nb: ok\n")
    assert errors == [
        "f.yaml:1:4: bad value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    ]
    assert root.plain() == {"a": None, "b": "ok"}


def test_unknown_tags_on_lists_and_mappings_are_bad_values_too():
    root, errors = parse("a: !!set {x: null}\nb: !custom [1]\nc: !!seq [1]\n")
    assert errors == [
        "f.yaml:1:4: bad value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:set'",
        "f.yaml:2:4: bad value: could not determine a constructor for the tag '!custom'",
    ]
    assert root.plain() == {"a": None, "b": None, "c": [1]}


def test_values_the_constructor_cannot_build_are_errors_not_crashes():
    root, errors = parse("a: !!int abc\nb: 2024-02-30\nc: 2024-02-29\n")
    assert errors == [
        "f.yaml:1:4: bad value 'abc': invalid literal for int() with base 10: 'abc'",
        "f.yaml:2:4: bad value '2024-02-30': day is out of range for month",
    ]
    assert root.plain()["c"] == datetime.date(2024, 2, 29)


def test_invalid_utf8_points_at_the_bad_byte():
    errors = Collector()
    assert load(b"a: 1\nb: caf\xc3\xa9 \xff\n", "f.yaml", errors) is None
    assert [str(d) for d in errors.diagnostics] == [
        "f.yaml:2:9: file is not valid UTF-8 (byte 0xff)"
    ]


def test_control_characters_are_errors_at_their_place():
    _, errors = parse("a: 1\nb: x\x01y\n")
    assert errors == [
        "f.yaml:2:5: YAML error: unacceptable character #x0001: special characters are not allowed"
    ]


def test_a_lone_surrogate_in_text_is_an_error_not_a_crash():
    # regression: libyaml's parser raised UnicodeEncodeError for a str holding U+D800
    _, errors = parse("a: 1\nb: \ud800\n")
    assert errors == [
        "f.yaml:2:4: YAML error: unacceptable character #xd800: special characters are not allowed"
    ]


def test_an_encoded_surrogate_is_not_valid_utf8():
    errors = Collector()
    assert load(b"a: \xed\xa0\x80\n", "f.yaml", errors) is None
    assert [str(d) for d in errors.diagnostics] == [
        "f.yaml:1:4: file is not valid UTF-8 (byte 0xed)"
    ]


def test_a_number_too_long_to_be_one_is_an_error_and_fast():
    # regression: PyYAML builds '1:0:0...' (base 60) in quadratic time, and Python cannot
    # print an integer of more than 4,300 digits (a traceback in every message about it)
    start = time.monotonic()
    root, errors = parse("a: 1" + ":0" * 300_000 + "\nb: 0x" + "f" * 5000 + "\nc: 1:0:0\n")
    assert time.monotonic() - start < 10
    assert errors == [
        f"f.yaml:1:4: bad value: a number of more than {MAX_NUMBER_CHARS} characters "
        "(quote it if it is text)",
        f"f.yaml:2:4: bad value: a number of more than {MAX_NUMBER_CHARS} characters "
        "(quote it if it is text)",
    ]
    assert root.plain() == {"a": None, "b": None, "c": 3600}


def test_a_long_number_in_quotes_is_text():
    root, errors = parse('a: "' + "1" * 5000 + '"\n')
    assert errors == [] and root.plain() == {"a": "1" * 5000}


def test_the_size_limit_counts_utf8_bytes_of_text():
    errors = Collector()
    text = "a: " + "é" * (MAX_FILE_BYTES // 2)
    assert load(text, "f.yaml", errors) is None
    assert [str(d) for d in errors.diagnostics] == [
        f"f.yaml:1:1: file is too large ({len(text.encode())} bytes; the limit is {MAX_FILE_BYTES})"
    ]


def test_file_over_the_size_limit_is_refused_before_parsing():
    errors = Collector()
    assert load("#" * (MAX_FILE_BYTES + 1), "f.yaml", errors) is None
    assert [str(d) for d in errors.diagnostics] == [
        f"f.yaml:1:1: file is too large ({MAX_FILE_BYTES + 1} bytes; the limit is {MAX_FILE_BYTES})"
    ]


# -- describe ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({}, "a mapping"),
        ([], "a list"),
        (None, "nothing (null)"),
        (True, "a boolean (true)"),
        (False, "a boolean (false)"),
        (9, "an integer (9)"),
        (3.5, "a number (3.5)"),
        (datetime.date(2024, 1, 2), "a date (2024-01-02)"),
        ("x", "a string"),
        (b"x", "bytes"),
    ],
)
def test_describe_names_the_kind_of_value(value, text):
    assert describe(node(value)) == text


# -- Reader -------------------------------------------------------------------


@pytest.fixture
def errors():
    return Collector()


@pytest.fixture
def reader(errors):
    return Reader(errors)


def messages(errors):
    return [str(d) for d in errors.diagnostics]


def test_mapping_returns_only_allowed_keys_and_reports_unknown_ones(reader, errors):
    root, _ = parse("name: a\nseries: el9\nsereis: el8\n")
    got = reader.mapping(root, "job 'a'", {"name", "series"})
    assert list(got) == ["name", "series"]
    assert messages(errors) == [
        "f.yaml:3:1: unknown key 'sereis' in job 'a'; did you mean 'series'?"
    ]


def test_mapping_reports_missing_required_keys_at_the_mapping(reader, errors):
    root, _ = parse("x:\n  name: a\n")
    reader.mapping(root.value["x"], "worker", {"name", "arch"}, required=("name", "arch"))
    assert messages(errors) == ["f.yaml:2:3: worker: missing required key 'arch'"]


def test_mapping_of_a_non_mapping_is_an_error_and_none(reader, errors):
    assert reader.mapping(node([1]), "the pipeline file", {"jobs"}) is None
    assert messages(errors) == ["f.yaml:4:2: the pipeline file: expected a mapping, got a list"]


def test_string_accepts_numbers_only_when_asked(reader, errors):
    assert reader.string(node("el9"), "'series'") == "el9"
    assert reader.string(node(3.11), "'python'", numbers=True) == "3.11"
    assert reader.string(node(7), "'series'") is None
    assert reader.string(node(True), "'x'", numbers=True) is None
    assert messages(errors) == [
        "f.yaml:4:2: 'series': expected a string, got an integer (7)",
        "f.yaml:4:2: 'x': expected a string, got a boolean (true)",
    ]


def test_boolean_refuses_strings_that_look_boolean(reader, errors):
    assert reader.boolean(node(False), "'root'") is False
    assert reader.boolean(node("false"), "'root'") is None
    assert messages(errors) == ["f.yaml:4:2: 'root': expected true or false, got a string"]


def test_integer_checks_type_and_minimum(reader, errors):
    assert reader.integer(node(5), "'n'", minimum=1) == 5
    assert reader.integer(node(0), "'n'", minimum=1) is None
    assert reader.integer(node(True), "'n'") is None
    assert reader.integer(node("5"), "'n'") is None
    assert messages(errors) == [
        "f.yaml:4:2: 'n': expected an integer of at least 1, got 0",
        "f.yaml:4:2: 'n': expected an integer, got a boolean (true)",
        "f.yaml:4:2: 'n': expected an integer, got a string",
    ]


def test_string_list_returns_each_string_with_its_node(reader, errors):
    root, _ = parse("a: [x86_64, 7, aarch64]\n")
    got = reader.string_list(root.value["a"], "'architectures'")
    assert [(s, n.mark.column) for s, n in got] == [("x86_64", 5), ("aarch64", 16)]
    assert messages(errors) == [
        "f.yaml:1:13: 'architectures' entry: expected a string, got an integer (7)"
    ]


def test_string_list_takes_a_single_string_only_when_allowed(reader, errors):
    single = node("amd64")
    assert reader.string_list(single, "'architectures'", allow_single=True) == [("amd64", single)]
    assert reader.string_list(single, "'packages'") is None
    assert reader.string_list(node({}), "'arches'", allow_single=True) is None
    assert messages(errors) == [
        "f.yaml:4:2: 'packages': expected a list of strings, got a string",
        "f.yaml:4:2: 'arches': expected a string or a list of strings, got a mapping",
    ]


def test_string_map_turns_numbers_into_strings_and_keeps_nulls_when_nullable(reader, errors):
    root, _ = parse("env: {A: x, B: 1, C: 2.5, D: null, E: [1]}\n")
    env = root.value["env"]
    assert reader.string_map(env, "'environment'", nullable=True) == {
        "A": "x",
        "B": "1",
        "C": "2.5",
        "D": None,
    }
    assert messages(errors) == ["f.yaml:1:39: 'environment' 'E': expected a string, got a list"]


def test_string_map_refuses_null_unless_nullable(reader, errors):
    root, _ = parse("env: {D: null}\n")
    assert reader.string_map(root.value["env"], "'environment'") == {}
    assert messages(errors) == [
        "f.yaml:1:10: 'environment' 'D': expected a string, got nothing (null)"
    ]


def test_string_map_of_a_list_is_an_error(reader, errors):
    assert reader.string_map(node(["A=1"]), "'environment'") == {}
    assert messages(errors) == ["f.yaml:4:2: 'environment': expected a mapping, got a list"]


# -- bad input: property-based ---------------------------------------------------


def depth(node: Node) -> int:
    if node.is_scalar:
        return 0
    children = node.value.values() if node.is_map else node.value
    return 1 + max((depth(c) for c in children), default=0)


@BAD_INPUT
@given(any_text())
def test_any_text_or_bytes_loads_or_gives_errors_with_their_place(text):
    errors = Collector()
    root = load(text, "f.yaml", errors)
    assert_located(errors, "f.yaml", text)
    if root is None:
        assert errors.diagnostics
    else:
        assert depth(root) <= MAX_DEPTH
        root.plain()
        for diagnostic in errors.diagnostics:  # values it could not use: each one located
            assert diagnostic.message
