"""Configuration errors that say where they are: ``FILE:LINE:COLUMN: message``.

Loaders collect every error of a load in a :class:`Collector` and raise one
:class:`ConfigError` at the end, so a user sees all problems at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Mark:
    """A place in a configuration file; line and column count from 1."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# Control characters and line separators, escaped when a diagnostic is printed: a message
# quotes values from the file (keys, names), and each diagnostic must stay one line that
# starts with its place, whatever the file holds.
_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)},
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(text: str) -> str:
    """``text`` with its control characters and line separators escaped (``\\n``, ...)."""
    return text.translate(_ESCAPES)


@dataclass(frozen=True, order=True)
class Diagnostic:
    mark: Mark
    message: str

    def __str__(self) -> str:
        return one_line(f"{self.mark}: {self.message}")


class ConfigError(Exception):
    """One or more configuration errors, each with its place."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sorted(set(diagnostics)))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @property
    def messages(self) -> list[str]:
        return [str(d) for d in self.diagnostics]


@dataclass
class Collector:
    """Collects diagnostics; :meth:`check` raises them all at once."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, mark: Mark, message: str) -> None:
        self.diagnostics.append(Diagnostic(mark, message))

    def extend(self, other: ConfigError | Collector) -> None:
        self.diagnostics.extend(other.diagnostics)

    def __bool__(self) -> bool:
        return bool(self.diagnostics)

    def check(self) -> None:
        if self.diagnostics:
            raise ConfigError(self.diagnostics)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
