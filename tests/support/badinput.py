"""Bad input for property-based tests (hypothesis): YAML files of every shape, and hostile
values for the commands a change's metadata flows into.

A test module builds documents of its format from the real keys with mostly valid values
(so that the examples get past the syntax checks into the deep validation, and some are
valid); :func:`damaged` makes one value of some of them wrong (another type, removed, an
unknown key beside it), and :func:`yaml_documents` writes them out in block or flow style,
sometimes broken by one edit (a character inserted or deleted, a line duplicated, an alias
and a merge key added), for syntax errors in every place. :func:`any_text` is arbitrary
text and bytes; :func:`assert_located` checks what every error must look like.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gating.diagnostics import Collector

# Every suite of bad input runs at least this many examples.
EXAMPLES = 1000
BAD_INPUT = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values a change can carry (branch names, subjects, file names, package names...) that a
# shell, or a command's option parser, would read as something else.
HOSTILE = (
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "x; rm -rf /",
    "x && rm -rf / #",
    "a\nb",
    "-x",
    "--upload-pack=touch /tmp/pwned",
    "--output=/etc/passwd",
    "-oProxyCommand=touch /tmp/pwned",
    "'\"\\",
    "a b\tc",
    "*",
    "~root",
    "${IFS}",
    "x" * 100_000,
    "caf\udce9",  # a non-UTF-8 byte, as os.fsdecode gives it
    "\udcff\udcfe",
)

# Characters that make YAML mean something else, or nothing at all.
_YAML_SYNTAX = list(":-[]{},#&*!|>'\"%@`? \t\n\r\\") + ["\x00", "\x85", "\u2028", "\ufeff"]


def scalars(words: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """Scalars of every YAML type; strings are mostly ``words`` (the format's own names)."""
    strings = st.one_of(
        st.sampled_from(words or ("x",)),
        st.sampled_from(HOSTILE[:12]),
        st.text(max_size=8),
    )
    return st.one_of(
        strings,
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.dates(),
    )


def values(words: tuple[str, ...] = (), keys: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """A scalar, a short list of scalars or a small mapping (keys mostly from ``keys``)."""
    scalar = scalars(words)
    key = st.one_of(st.sampled_from(keys or words or ("x",)), st.text(max_size=4))
    return st.one_of(
        scalar,
        scalar,
        st.lists(scalar, max_size=3),
        st.dictionaries(key, scalar, max_size=2),
    )


def rare(draw: st.DrawFn, one_in: int = 10) -> bool:
    """True once in ``one_in`` draws (as hypothesis sees it: shrinks towards False)."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def _places(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of a generated document."""
    out: list[tuple[Any, Any]] = []
    todo = [doc]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            out.append((node, key))
            if isinstance(value, dict | list):
                todo.append(value)
    return out


@st.composite
def damaged(
    draw: st.DrawFn,
    documents: st.SearchStrategy[Any],
    words: tuple[str, ...] = (),
    keys: tuple[str, ...] = (),
) -> Any:
    """A document of ``documents``; one in three has one value made wrong: replaced by a
    value of another type, removed, or given an unknown key beside it."""
    doc = draw(documents)
    if not rare(draw, 3):
        return doc
    places = _places(doc) if isinstance(doc, dict | list) else []
    if not places:
        return draw(values(words, keys))
    container, key = draw(st.sampled_from(places))
    how = draw(st.sampled_from(["replace", "replace", "remove", "unknown key"]))
    if how == "replace":
        container[key] = draw(values(words, keys))
    elif how == "remove":
        del container[key]
    elif isinstance(container, dict):
        known = sorted(keys or ("x",))
        unknown = draw(st.one_of(st.sampled_from(known).map(lambda k: k[:-1]), st.text(max_size=5)))
        container.setdefault(unknown, draw(values(words, keys)))
    else:
        container.append(draw(values(words, keys)))
    return doc


@st.composite
def yaml_documents(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> str:
    """A generated structure written as YAML in some style, sometimes damaged by one edit."""
    doc = draw(documents)
    style = draw(st.sampled_from([False, None, True]))
    text = yaml.safe_dump(
        doc,
        default_flow_style=style,
        allow_unicode=draw(st.booleans()),
        sort_keys=False,
        width=draw(st.sampled_from([40, 80, 10_000])),
    )
    edit = (
        "none"
        if not rare(draw, 4)
        else draw(st.sampled_from(["insert", "delete", "line", "anchor"]))
    )
    if edit == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(_YAML_SYNTAX)) + text[at:]
    elif edit == "delete" and text:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + text[at + 1 :]
    elif edit == "line":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines) - 1))
        lines.insert(at, lines[at])  # a duplicate key, or a list entry twice
        text = "".join(lines)
    elif edit == "anchor":
        # aliases and merge keys, as hand-written files use them
        text = "defaults: &d {architectures: [x86_64], run: make}\n" + text.replace(
            "architectures:", "<<: *d\n  architectures:", 1
        )
    return text


def any_text() -> st.SearchStrategy[str | bytes]:
    """Arbitrary text and bytes, with YAML's syntax characters more likely."""
    return st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(_YAML_SYNTAX + list("abc01 \n"))),
        st.binary(),
        st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


# -- what every error must look like ----------------------------------------------------


def _breaks(text: str) -> int:
    """The most line breaks PyYAML can count in ``text`` (it counts \\r, \\x85, U+2028...)."""
    return sum(text.count(c) for c in ("\n", "\r", "\x85", "\u2028", "\u2029"))


def assert_located(errors: Collector, filename: str, text: str | bytes) -> None:
    """Every diagnostic names ``filename`` and a line and column inside ``text``, and prints
    as one line ``FILE:LINE:COLUMN: message``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line_re = re.compile(rf"^{re.escape(filename)}:[1-9][0-9]*:[1-9][0-9]*: \S")
    for diagnostic in errors.diagnostics:
        mark = diagnostic.mark
        assert mark.file == filename
        assert 1 <= mark.line <= _breaks(text) + 2, diagnostic
        assert 1 <= mark.column <= len(text) + 2, diagnostic
        printed = str(diagnostic)
        assert line_re.match(printed), printed
        assert "\n" not in printed and "\r" not in printed, printed
