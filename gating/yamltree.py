"""YAML loaded into a tree where every value keeps its place in the file.

``load()`` parses one document with PyYAML's safe loader, rejects duplicate
keys and non-string keys, and returns a :class:`Node` tree. The ``Reader``
helpers check types and keys, recording errors in a
:class:`~gating.diagnostics.Collector` instead of raising, so a loader can
report every mistake of a file at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from gating.diagnostics import Collector, Mark, did_you_mean

# Limits that keep a hostile or mistaken file from exhausting the master; each is an
# error with the file's name and the place (FILE:LINE:COLUMN), never an exception.
MAX_FILE_BYTES = 1024 * 1024  # the file's size, in bytes (UTF-8)
MAX_VALUES = 100_000  # values built, each use of an alias counted again
MAX_DEPTH = 32  # lists and mappings inside one another
MAX_NUMBER_CHARS = 100  # an integer or number written with more characters (quote text)


_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class _TooManyValues(Exception):
    pass


@dataclass(frozen=True)
class Node:
    """A located YAML value.

    ``value`` is a Python scalar for scalars, a list of ``Node`` for sequences
    and a dict of ``str -> Node`` for mappings (in file order);
    ``key_marks`` gives where each mapping key was written.
    """

    value: Any
    mark: Mark
    key_marks: dict[str, Mark] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.value, list)

    @property
    def is_scalar(self) -> bool:
        return not (self.is_map or self.is_seq)

    def key_mark(self, key: str) -> Mark:
        return self.key_marks.get(key, self.mark)

    def items(self) -> Iterator[tuple[str, Node]]:
        return iter(self.value.items()) if self.is_map else iter(())

    def plain(self) -> Any:
        """The value without marks (plain dicts, lists and scalars)."""
        if self.is_map:
            return {k: v.plain() for k, v in self.value.items()}
        if self.is_seq:
            return [v.plain() for v in self.value]
        return self.value


def describe(node: Node) -> str:
    """'a string', 'a list', ... for error messages."""
    v = node.value
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, int):
        return f"an integer ({v})"
    if isinstance(v, float):
        return f"a number ({v})"
    if isinstance(v, datetime.date):
        return f"a date ({v})"
    if isinstance(v, str):
        return "a string"
    return type(v).__name__


def _mark(filename: str, m: yaml.Mark | None) -> Mark:
    if m is None:
        return Mark(filename)
    return Mark(filename, m.line + 1, m.column + 1)


class _Builder:
    def __init__(self, filename: str, errors: Collector) -> None:
        self.filename = filename
        self.errors = errors
        self.constructor = yaml.constructor.SafeConstructor()
        self.count = 0

    def build(self, node: yaml.Node, depth: int = 1) -> Node:
        """``node`` as a :class:`Node`; ``depth``: how many lists and mappings it is in,
        itself included."""
        # Aliases are expanded, so count every value built: a few lines of nested
        # aliases ("billion laughs") must not exhaust the master.
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooManyValues()
        mark = _mark(self.filename, node.start_mark)
        if isinstance(node, yaml.CollectionNode) and depth > MAX_DEPTH:
            self.errors.error(mark, _too_deep_message())
            return Node(None, mark)
        if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
            # e.g. "!!python/object/apply:os.system [...]" or "!!set": never a plain list
            self.errors.error(
                mark, f"bad value: could not determine a constructor for the tag '{node.tag}'"
            )
            return Node(None, mark)
        if isinstance(node, yaml.MappingNode):
            values: dict[str, Node] = {}
            key_marks: dict[str, Mark] = {}
            merged: dict[str, Node] = {}
            merged_marks: dict[str, Mark] = {}
            for key_node, value_node in node.value:
                kmark = _mark(self.filename, key_node.start_mark)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    # YAML merge keys ("<<: *defaults"), as PyYAML's safe_load and so lpci
                    # read them: keys written in this mapping win, then the earlier source.
                    sources = (
                        value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else [value_node]
                    )
                    for source in sources:
                        if not isinstance(source, yaml.MappingNode):
                            self.errors.error(
                                _mark(self.filename, source.start_mark),
                                "merge key ('<<') expects a mapping or a list of mappings",
                            )
                            continue
                        built = self.build(source, depth + 1)
                        for key, value in built.items():
                            if key not in merged:
                                merged[key] = value
                                merged_marks[key] = built.key_mark(key)
                    continue
                if not (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.tag == "tag:yaml.org,2002:str"
                ):
                    got = describe(self.build(key_node, depth + 1))
                    self.errors.error(kmark, f"keys must be strings, got {got}")
                    continue
                key = key_node.value
                if key in values:
                    first = key_marks[key]
                    self.errors.error(
                        kmark,
                        f"duplicate key '{key}' (first defined at line {first.line}, "
                        f"column {first.column})",
                    )
                    continue
                key_marks[key] = kmark
                values[key] = self.build(value_node, depth + 1)
            if merged:
                for key in merged.keys() - values.keys():
                    key_marks[key] = merged_marks[key]
                values = {
                    **{k: v for k, v in merged.items() if k not in values},
                    **values,
                }
            return Node(values, mark, key_marks)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.build(v, depth + 1) for v in node.value], mark)
        if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            # PyYAML's sexagesimal integers (1:0:0...) take quadratic time to build, and
            # Python refuses to print an integer of more than 4,300 digits.
            self.errors.error(
                mark,
                f"bad value: a number of more than {MAX_NUMBER_CHARS} characters "
                "(quote it if it is text)",
            )
            return Node(None, mark)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.errors.error(mark, f"bad value: {exc.problem or exc.context}")
            value = None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # e.g. "!!int abc", or a date that does not exist (2024-02-30)
            self.errors.error(mark, f"bad value '{node.value}': {exc}")
            value = None
        return Node(value, mark)


def _too_deep_message() -> str:
    return f"nested too deeply (more than {MAX_DEPTH} levels of lists and mappings)"


def _too_deep_mark(text: str) -> yaml.Mark | None:
    """Where ``text`` first nests lists and mappings more than :data:`MAX_DEPTH` deep,
    found with the pure-Python parser's events: unlike the composer it does not recurse,
    and unlike libyaml's it has no nesting limit of its own."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return None


def _position(text: str, index: int) -> tuple[int, int]:
    """The line and column (from 1) of the character at ``index`` of ``text``."""
    index = max(0, min(index, len(text)))
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


# libyaml's parser (PyYAML's C extension) composes the same nodes ~10x faster than the
# pure-Python one: a master with 1,000 pipeline files loads them at each start and
# reconfig. It limits nesting to 1,000 levels.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    """``yaml.compose`` with libyaml when PyYAML has it; a document it refuses is parsed
    again by the pure-Python parser, whose errors (with their places) are reported. Text
    with tabs goes to the pure-Python parser only: libyaml accepts some tabs (``a:<TAB>b``)
    that it refuses, and a file must mean the same to both."""
    if _FAST_LOADER is not None and "\t" not in text:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, UnicodeEncodeError):  # e.g. a lone surrogate in a str
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load(text: str | bytes, filename: str, errors: Collector) -> Node | None:
    """Parse one YAML document; syntax errors go to ``errors`` with their place."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        errors.error(
            Mark(filename), f"file is too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
        )
        return None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line_start = text.rfind(b"\n", 0, exc.start) + 1
            column = len(text[line_start : exc.start].decode("utf-8")) + 1
            errors.error(
                Mark(filename, text.count(b"\n", 0, exc.start) + 1, column),
                f"file is not valid UTF-8 (byte 0x{text[exc.start]:02x})",
            )
            return None
    try:
        tree = _compose(text)
    except RecursionError:
        errors.error(_mark(filename, _too_deep_mark(text)), _too_deep_message())
        return None
    except yaml.reader.ReaderError as exc:
        # a character YAML does not allow (control characters, lone surrogates...)
        line, column = _position(text, exc.position)
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        errors.error(
            Mark(filename, line, column), f"YAML error: unacceptable character {what}: {exc.reason}"
        )
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        context = ""
        if exc.context and exc.context.startswith("found duplicate anchor") and exc.context_mark:
            first = exc.context_mark
            anchor = exc.context.split(";")[0].removeprefix("found ")
            problem = (
                f"{anchor} (first defined at line {first.line + 1}, column {first.column + 1})"
            )
        elif exc.context and not exc.context.startswith("while "):
            # e.g. "expected a single document in the stream, but found another document"
            problem = f"{exc.context}, {problem}"
        elif exc.context:
            where = exc.context_mark
            start = (
                f" that starts at line {where.line + 1}, column {where.column + 1}"
                if where is not None
                and (mark is None or (where.line, where.column) != (mark.line, mark.column))
                else ""
            )
            context = f" ({exc.context}{start})"
        # a block that starts where none may: almost always a line indented wrongly
        block_start = ("'<block mapping start>'", "'<block sequence start>'")
        hint = "; check the indentation" if problem.endswith(block_start) else ""
        errors.error(_mark(filename, mark), f"YAML syntax error: {problem}{context}{hint}")
        return None
    except yaml.YAMLError as exc:
        errors.error(Mark(filename), f"YAML error: {exc}")
        return None
    if tree is None:
        return Node(None, Mark(filename))
    try:
        return _Builder(filename, errors).build(tree)
    except _TooManyValues:
        errors.error(
            Mark(filename),
            f"file has more than {MAX_VALUES} values (counting each use of an alias)",
        )
    except RecursionError:
        errors.error(Mark(filename), _too_deep_message())
    return None


class Reader:
    """Typed access to :class:`Node` values; mistakes become errors, not exceptions."""

    def __init__(self, errors: Collector) -> None:
        self.errors = errors

    def fail(self, node: Node, message: str) -> None:
        self.errors.error(node.mark, message)

    def mapping(
        self,
        node: Node,
        what: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Node] | None:
        """Check ``node`` is a mapping with only ``allowed`` keys and every ``required`` one."""
        if not node.is_map:
            self.fail(node, f"{what}: expected a mapping, got {describe(node)}")
            return None
        allowed = set(allowed)
        for key in node.value:
            if key not in allowed:
                self.errors.error(
                    node.key_mark(key),
                    f"unknown key '{key}' in {what}{did_you_mean(key, allowed)}",
                )
        for key in required:
            if key not in node.value:
                self.fail(node, f"{what}: missing required key '{key}'")
        return {k: v for k, v in node.value.items() if k in allowed}

    def string(self, node: Node, what: str, *, numbers: bool = False) -> str | None:
        v = node.value
        if isinstance(v, str):
            return v
        if numbers and isinstance(v, int | float) and not isinstance(v, bool):
            return str(v)
        self.fail(node, f"{what}: expected a string, got {describe(node)}")
        return None

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node.value, bool):
            return node.value
        self.fail(node, f"{what}: expected true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, what: str, minimum: int | None = None) -> int | None:
        v = node.value
        if not isinstance(v, int) or isinstance(v, bool):
            self.fail(node, f"{what}: expected an integer, got {describe(node)}")
            return None
        if minimum is not None and v < minimum:
            self.fail(node, f"{what}: expected an integer of at least {minimum}, got {v}")
            return None
        return v

    def string_list(
        self, node: Node, what: str, *, allow_single: bool = False
    ) -> list[tuple[str, Node]] | None:
        """A list of strings (or one string when ``allow_single``), each with its node."""
        if allow_single and isinstance(node.value, str):
            return [(node.value, node)]
        if not node.is_seq:
            expected = "a string or a list of strings" if allow_single else "a list of strings"
            self.fail(node, f"{what}: expected {expected}, got {describe(node)}")
            return None
        out: list[tuple[str, Node]] = []
        for item in node.value:
            s = self.string(item, f"{what} entry")
            if s is not None:
                out.append((s, item))
        return out

    def string_map(self, node: Node, what: str, *, nullable: bool = False) -> dict[str, str | None]:
        """A mapping of strings to strings (numbers accepted and turned into strings)."""
        if not node.is_map:
            self.fail(node, f"{what}: expected a mapping, got {describe(node)}")
            return {}
        out: dict[str, str | None] = {}
        for key, value in node.items():
            if nullable and value.value is None:
                out[key] = None
                continue
            s = self.string(value, f"{what} '{key}'", numbers=True)
            if s is not None:
                out[key] = s
        return out
