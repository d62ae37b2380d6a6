"""The secret-leak search of the test run: every secret a test gives a site must stay in the
places that legitimately hold it, and appear in no log, database row, state file or API
answer of that site.

* :class:`SecretRegistry`: the secret values (label -> value), registered by the fixtures
  (``make_site(secrets=...)``, the test servers' passwords) and found in each site's
  secrets directory (worker passwords, koji/Gerrit/AMQP/web passwords). A value shorter
  than :data:`MIN_LENGTH` characters is not searched (it would match by chance); the
  registry keeps its label in ``skipped``.
* :func:`encodings`: each value raw, URL-encoded (``%XX`` upper and lower case, ``+`` for
  a space), JSON-escaped, and in base64 at each of the three alignments (so the base64 of
  ``user:password`` in a copied ``Authorization: Basic`` header is found without knowing the
  user), standard and URL-safe alphabets.
* :func:`check_site`: scans a :class:`gating.localsite.LocalSite` layout (``config/``,
  ``master/``, ``workers/NAME/`` and whatever else the site made under its base
  directory): every regular file byte by byte (gzip files and loose git objects also
  decompressed; git pack files are not), every SQLite database row by row (every text and
  blob column of every table; ``logchunks.content`` decoded by its ``compressed`` column
  with Buildbot's own codecs), and the HTTP answers the test process fetched from the
  site's web port (:class:`ResponseRecorder`; :func:`fetch_api` fetches the API's
  collections before a site stops). :func:`check_site_database`: the same row search of
  a site's database on a PostgreSQL server.
  Not scanned: the secrets directory. Accepted (reported in ``Report.accepted``, not a
  leak): a worker's own password in ``workers/NAME/buildbot.tac`` (Buildbot's worker reads
  it from there) or ``workers/NAME/passwd`` (``workers/make-worker``'s layout), and the web
  login's ``htpasswd`` file named by the site's ``web: auth: htpasswd`` (whose plain-text
  passwords are searched for everywhere else).

A :class:`Finding` names the secret's label, the encoding, the place (file, table/column/
row, or request) and the byte offset; never the value.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import yaml

MIN_LENGTH = 6  # shorter values are not searched (they would match by chance)
B64_MIN_CORE = 8  # base64 characters fixed by the secret alone, at one alignment
CHUNK = 8 << 20  # files are read in chunks of this size (overlapping by a needle)
GZIP_LIMIT = 64 << 20  # decompressed size searched in a gzip file
SQLITE_MAGIC = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
GIT_LOOSE_OBJECT = re.compile(r"/objects/[0-9a-f]{2}/[0-9a-f]{38}$")


# -- the secrets ----------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    label: str
    value: str = field(repr=False)
    user: str | None = None  # the HTTP basic-auth user that goes with it, if any


@dataclass(frozen=True)
class Needle:
    secret: Secret
    encoding: str
    data: bytes = field(repr=False)

    @property
    def label(self) -> str:
        return self.secret.label


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def encodings(value: str, user: str | None = None) -> list[tuple[str, bytes]]:
    """The byte strings that betray ``value``: (encoding name, bytes), without duplicates."""
    raw = value.encode()
    forms: dict[bytes, str] = {}

    def add(name: str, data: bytes) -> None:
        forms.setdefault(data, name)

    add("raw", raw)
    for quoted in (quote(value, safe=""), quote(value), quote_plus(value)):
        add("URL-encoded", quoted.encode())
        add("URL-encoded", _lower_escapes(quoted).encode())
    add("JSON-escaped", json.dumps(value)[1:-1].encode())
    add("JSON-escaped", json.dumps(value, ensure_ascii=False)[1:-1].encode())
    # base64 of any text holding the value: at each alignment k of the value in the encoded
    # text, the 4-character groups made of the value's bytes alone.
    urlsafe = bytes.maketrans(b"+/", b"-_")
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw)
        core = encoded[4 if k else 0 : 4 * ((k + len(raw)) // 3)]
        if len(core) >= B64_MIN_CORE:
            add("base64", core)
            add("base64 (URL-safe)", core.translate(urlsafe))
    if user is not None:
        add("base64 of user:password", base64.b64encode(f"{user}:{value}".encode()))
    return [(name, data) for data, name in forms.items()]


class SecretRegistry:
    """Secret values by label. Thread-safe; a value registered twice keeps its first label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_value: dict[str, Secret] = {}
        self.skipped: dict[str, str] = {}  # label -> why it is not searched

    def add(self, label: str, value: str, *, user: str | None = None) -> bool:
        """Register a secret (surrounding whitespace and newlines stripped, as Buildbot's
        ``SecretInAFile`` strips the trailing newline); False if it is too short to search."""
        value = value.strip()
        with self._lock:
            if len(value) < MIN_LENGTH:
                self.skipped[label] = f"{len(value)} characters, fewer than {MIN_LENGTH}"
                return False
            known = self._by_value.get(value)
            if known is None or (user is not None and known.user is None):
                self._by_value[value] = Secret(known.label if known else label, value, user)
            return True

    def add_dir(self, directory: Path, prefix: str) -> None:
        """Every file under ``directory`` is a secret, labelled ``prefix/RELATIVE-PATH``."""
        if not directory.is_dir():
            return
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                text = path.read_bytes().decode("utf-8", errors="replace")
                self.add(f"{prefix}/{path.relative_to(directory)}", text)

    def copy(self) -> SecretRegistry:
        other = SecretRegistry()
        with self._lock:
            other._by_value = dict(self._by_value)
            other.skipped = dict(self.skipped)
        return other

    def secrets(self) -> list[Secret]:
        with self._lock:
            return list(self._by_value.values())

    def needles(self) -> list[Needle]:
        return [
            Needle(s, name, data)
            for s in self.secrets()
            for name, data in encodings(s.value, s.user)
        ]


# -- findings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    label: str
    encoding: str
    where: str
    offset: int
    count: int = 1

    def __str__(self) -> str:
        more = f" (and {self.count - 1} more there)" if self.count > 1 else ""
        return (
            f"secret {self.label!r} ({self.encoding}) in {self.where} at byte {self.offset}{more}"
        )


@dataclass(frozen=True)
class Allowance:
    """A file (glob relative to the scanned root) allowed to hold some secret values (None:
    any), with the reason."""

    pattern: str
    reason: str
    values: frozenset[str] | None = field(default=None, repr=False)

    def allows(self, rel: str, value: str) -> bool:
        return fnmatch.fnmatchcase(rel, self.pattern) and (
            self.values is None or value in self.values
        )


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # places that could not be searched
    accepted: list[str] = field(default_factory=list)  # secrets found where they belong
    excluded: list[str] = field(default_factory=list)  # directories not searched, with reason
    skipped: dict[str, str] = field(default_factory=dict)  # secrets not searched, why
    files: int = 0
    bytes: int = 0
    rows: int = 0
    responses: int = 0

    @property
    def clean(self) -> bool:
        return not self.findings and not self.problems

    def extend(self, other: Report) -> None:
        self.findings += other.findings
        self.problems += other.problems
        self.accepted += other.accepted
        self.excluded += other.excluded
        self.skipped.update(other.skipped)
        self.files += other.files
        self.bytes += other.bytes
        self.rows += other.rows
        self.responses += other.responses

    def summary(self) -> str:
        return (
            f"{self.files} files ({self.bytes} bytes), {self.rows} database rows, "
            f"{self.responses} HTTP answers searched"
        )

    def message(self, what: str) -> str:
        lines = [f"secret-leak search of {what}: {self.summary()}"]
        lines += [f"  LEAK: {f}" for f in self.findings]
        lines += [f"  NOT SEARCHED: {p}" for p in self.problems]
        return "\n".join(lines)


class SecretLeak(AssertionError):
    """A secret value was found outside the places that legitimately hold it."""


def _hits(
    data: bytes | bytearray, needles: Sequence[Needle], min_end: int = 0
) -> Iterator[tuple[Needle, int, int]]:
    """(needle, first offset, count) of each needle found in ``data``, counting only the
    occurrences that end after ``min_end`` (the overlap already searched)."""
    for needle in needles:
        size = len(needle.data)
        first, count, at = -1, 0, data.find(needle.data)
        while at >= 0:
            if at + size > min_end:
                count += 1
                if first < 0:
                    first = at
            at = data.find(needle.data, at + 1)
        if count:
            yield needle, first, count


class Scanner:
    """Searches bytes, files, trees, SQLite databases and recorded HTTP answers for the
    needles of a registry; what it finds goes to ``report``."""

    def __init__(self, registry: SecretRegistry, report: Report | None = None) -> None:
        self.needles = registry.needles()
        self.longest = max((len(n.data) for n in self.needles), default=1)
        self.report = report or Report()
        self.report.skipped.update(registry.skipped)

    # -- bytes ------------------------------------------------------------------------

    def _allowance(self, needle: Needle, rel: str | None, allow: Sequence[Allowance]):
        value = needle.secret.value
        return next((a for a in allow if rel is not None and a.allows(rel, value)), None)

    def _record(self, hits: dict, where: str, rel: str | None, allow: Sequence[Allowance]):
        for (needle, first), count in hits.items():
            allowance = self._allowance(needle, rel, allow)
            if allowance is not None:
                self.report.accepted.append(
                    f"secret {needle.label!r} ({needle.encoding}) in {where}: {allowance.reason}"
                )
            else:
                self.report.findings.append(
                    Finding(needle.label, needle.encoding, where, first, count)
                )

    def scan_bytes(
        self,
        data: bytes | bytearray,
        where: str,
        *,
        rel: str | None = None,
        allow: Sequence[Allowance] = (),
    ) -> None:
        hits = {(needle, first): count for needle, first, count in _hits(data, self.needles)}
        self._record(hits, where, rel, allow)

    # -- files ------------------------------------------------------------------------

    def scan_file(
        self, path: Path, where: str, *, rel: str | None = None, allow: Sequence[Allowance] = ()
    ) -> None:
        """A file's bytes, read in overlapping chunks; a SQLite database also row by row,
        a gzip file also decompressed."""
        self.report.files += 1
        found: dict[Needle, list[int]] = {}  # needle -> [first offset, count]
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
            fh.seek(0)
            offset, tail = 0, b""
            while chunk := fh.read(CHUNK):
                self.report.bytes += len(chunk)
                window = tail + chunk
                for needle, first, count in _hits(window, self.needles, min_end=len(tail)):
                    seen = found.setdefault(needle, [offset - len(tail) + first, 0])
                    seen[1] += count
                tail = window[-(self.longest - 1) :] if self.longest > 1 else b""
                offset += len(chunk)
        self._record({(n, first): count for n, (first, count) in found.items()}, where, rel, allow)
        if head == SQLITE_MAGIC:
            self.scan_sqlite(path, where)
        elif head[:2] == GZIP_MAGIC:
            self._scan_gzip(path, where, rel=rel, allow=allow)
        elif GIT_LOOSE_OBJECT.search(path.as_posix()):
            self._scan_git_object(path, where, rel=rel, allow=allow)

    def _scan_git_object(
        self, path: Path, where: str, *, rel: str | None, allow: Sequence[Allowance]
    ) -> None:
        try:
            data = zlib.decompress(path.read_bytes())
        except (OSError, zlib.error) as exc:
            self.report.problems.append(f"{where}: a git object that does not inflate ({exc})")
            return
        self.scan_bytes(data, f"{where} (inflated git object)", rel=rel, allow=allow)

    def _scan_gzip(self, path: Path, where: str, *, rel: str | None, allow) -> None:
        try:
            with gzip.open(path, "rb") as fh:
                data = fh.read(GZIP_LIMIT + 1)
        except (OSError, EOFError, zlib.error) as exc:
            self.report.problems.append(f"{where}: a gzip file that does not decompress ({exc})")
            return
        if len(data) > GZIP_LIMIT:
            self.report.problems.append(
                f"{where}: decompressed beyond {GZIP_LIMIT} bytes, only the start searched"
            )
        self.scan_bytes(data[:GZIP_LIMIT], f"{where} (decompressed)", rel=rel, allow=allow)

    def scan_tree(
        self,
        root: Path,
        *,
        exclude: Iterable[tuple[Path, str]] = (),
        allow: Sequence[Allowance] = (),
        label: str | None = None,
    ) -> None:
        """Every regular file under ``root`` (symbolic links not followed), except the
        directories in ``exclude`` ((path, reason) pairs)."""
        excluded = {}
        for path, reason in exclude:
            excluded[os.path.realpath(path)] = reason
            self.report.excluded.append(f"{path}: {reason}")
        name = label or str(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(
                d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in excluded
            )
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                try:
                    if not path.is_file() or path.is_symlink():
                        continue
                    rel = path.relative_to(root).as_posix()
                    self.scan_file(path, f"{name}/{rel}", rel=rel, allow=allow)
                except OSError as exc:
                    self.report.problems.append(f"{path}: not readable ({exc})")

    # -- SQLite databases -------------------------------------------------------------

    def scan_sqlite(self, path: Path, where: str) -> None:
        """Every text and blob value of every table, ``logchunks.content`` decoded. Read from
        a private copy of the file and its write-ahead log (Buildbot runs SQLite in WAL
        mode: a master killed before its last checkpoint leaves rows only in the WAL)."""
        with tempfile.TemporaryDirectory(prefix="secretscan-") as tmp:
            copy = Path(tmp) / "db.sqlite"
            try:
                shutil.copyfile(path, copy)
                wal = path.with_name(path.name + "-wal")
                if wal.is_file():
                    shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
                con = sqlite3.connect(copy)
                try:
                    tables = [
                        r[0]
                        for r in con.execute(
                            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                        )
                    ]
                    for table in tables:
                        self.scan_rows(table, self._sqlite_rows(con, table), where)
                finally:
                    con.close()
            except (OSError, sqlite3.Error) as exc:
                self.report.problems.append(f"{where}: SQLite database not readable ({exc})")

    @staticmethod
    def _sqlite_rows(con: sqlite3.Connection, table: str) -> Iterator[tuple[str, dict]]:
        quoted = '"' + table.replace('"', '""') + '"'
        columns = [r[1] for r in con.execute(f"PRAGMA table_info({quoted})")]
        try:
            rows = con.execute(f"SELECT rowid, * FROM {quoted}")
        except sqlite3.OperationalError:  # a WITHOUT ROWID table
            rows = ((None, *r) for r in con.execute(f"SELECT * FROM {quoted}"))
        for rowid, *values in rows:
            yield f"rowid {rowid}", dict(zip(columns, values, strict=True))

    def scan_database_url(self, url: str, where: str) -> None:
        """A database server's database (PostgreSQL: a multi-master site's), every table."""
        import sqlalchemy as sa

        engine = sa.create_engine(url)  # as the master connects (postgresql://: psycopg)
        try:
            with engine.connect() as conn:
                for table in sorted(sa.inspect(conn).get_table_names()):
                    quoted = '"' + table.replace('"', '""') + '"'
                    result = conn.execute(sa.text(f"SELECT * FROM {quoted}"))
                    rows = (
                        (f"row {n}", dict(row._mapping)) for n, row in enumerate(result, start=1)
                    )
                    self.scan_rows(table, rows, where)
        except sa.exc.SQLAlchemyError as exc:
            self.report.problems.append(f"{where}: database not readable ({exc})")
        finally:
            engine.dispose()

    def scan_rows(self, table: str, rows: Iterable[tuple[str, dict]], where: str) -> None:
        for key, row in rows:
            self.report.rows += 1
            for column, value in row.items():
                if isinstance(value, str):
                    data = value.encode("utf-8", errors="surrogatepass")
                elif isinstance(value, (bytes, bytearray, memoryview)):
                    data = bytes(value)
                else:
                    continue
                place = f"{where} table {table}.{column} ({key})"
                if table == "logchunks" and column == "content":
                    decoded = self._decode_logchunk({**row, "content": data}, place)
                    if decoded is None:
                        continue
                    data = decoded
                    place = (
                        f"{where} table logchunks.content (logid {row.get('logid')}, lines "
                        f"{row.get('first_line')}-{row.get('last_line')}, decoded, "
                        f"compressed={row.get('compressed')})"
                    )
                self.scan_bytes(data, place)

    def _decode_logchunk(self, row: dict[str, Any], place: str) -> bytes | None:
        from buildbot.db.logs import LogsConnectorComponent

        codec_id = row.get("compressed") or 0
        codec = LogsConnectorComponent.COMPRESSION_BYID.get(codec_id)
        if codec is None or not codec.available:
            name = codec.name if codec is not None else "an unknown codec"
            self.report.problems.append(
                f"{place}: compressed with {name} ({codec_id}), which this Python cannot decode"
            )
            return None
        try:
            return codec.read(row["content"])
        except Exception as exc:  # noqa: BLE001 - any decoding error is reported
            self.report.problems.append(f"{place}: does not decode ({exc!r})")
            return None

    # -- HTTP answers -----------------------------------------------------------------

    def scan_responses(self, responses: Iterable[RecordedResponse]) -> None:
        for r in responses:
            self.report.responses += 1
            what = f"the HTTP answer to {r.method} http://{r.host}:{r.port}{r.url} ({r.status})"
            self.scan_bytes(r.headers, f"{what}, headers")
            self.scan_bytes(bytes(r.body), f"{what}, body")


# -- HTTP answers the test process fetched ---------------------------------------------


@dataclass(eq=False)
class RecordedResponse:
    seq: int
    host: str
    port: int
    method: str
    url: str
    status: int
    headers: bytes
    body: bytearray = field(default_factory=bytearray, repr=False)


class ResponseRecorder:
    """Keeps the HTTP answers (status line headers and body bytes as the client read them)
    the test process gets from loopback servers through ``http.client`` (so ``urllib``,
    ``requests``, ``xmlrpc``), while a window is open. Identical answers of one port are kept
    once. Windows: :meth:`open_window` / :meth:`close_window`, which returns what was
    recorded since it opened; records no open window still needs are dropped."""

    READERS = ("read", "read1", "readinto", "readline")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedResponse] = []
        self._seen: set[tuple[int, bytes]] = set()
        self._seq = 0
        self._windows: dict[int, int] = {}
        self._next_window = 0
        self._saved: dict[tuple[type, str], Any] = {}
        # Attributes of the connections and answers, per recorder (two may be installed).
        self._tag = f"_secretscan_{id(self):x}"

    # -- windows ----------------------------------------------------------------------

    def open_window(self) -> int:
        with self._lock:
            self._next_window += 1
            self._windows[self._next_window] = self._seq
            return self._next_window

    def close_window(self, token: int) -> list[RecordedResponse]:
        with self._lock:
            start = self._windows.pop(token)
            found = [r for r in self._records if r.seq >= start]
            oldest = min(self._windows.values(), default=None)
            if oldest is None:
                self._records, self._seen = [], set()
            else:
                self._records = [r for r in self._records if r.seq >= oldest]
            return found

    @property
    def recording(self) -> bool:
        return bool(self._windows)

    # -- the hooks --------------------------------------------------------------------

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def install(self) -> None:
        if self._saved:
            return
        recorder, tag = self, self._tag
        conn, resp = http.client.HTTPConnection, http.client.HTTPResponse
        putrequest, getresponse = conn.putrequest, conn.getresponse

        def recorded_putrequest(self: Any, method: str, url: str, *args: Any, **kw: Any) -> Any:
            setattr(self, f"{tag}_request", (method, url))
            return putrequest(self, method, url, *args, **kw)

        def recorded_getresponse(self: Any) -> Any:
            answer = getresponse(self)
            if recorder.recording and self.host in LOOPBACK:
                method, url = getattr(self, f"{tag}_request", ("?", "?"))
                record = recorder._new(
                    self.host, self.port, method, url, answer.status, str(answer.msg).encode()
                )
                setattr(answer, tag, record)
            return answer

        self._saved[(conn, "putrequest")] = putrequest
        self._saved[(conn, "getresponse")] = getresponse
        conn.putrequest = recorded_putrequest
        conn.getresponse = recorded_getresponse
        for name in self.READERS:
            self._saved[(resp, name)] = getattr(resp, name)
            setattr(resp, name, _teeing(name, getattr(resp, name), tag))
        close = resp.close

        def recorded_close(self: Any) -> None:
            close(self)
            record = self.__dict__.pop(tag, None)
            if record is not None:
                recorder._done(record)

        self._saved[(resp, "close")] = close
        resp.close = recorded_close

    def uninstall(self) -> None:
        for (cls, name), original in self._saved.items():
            setattr(cls, name, original)
        self._saved.clear()

    def _new(
        self, host: str, port: int, method: str, url: str, status: int, headers: bytes
    ) -> RecordedResponse:
        with self._lock:
            self._seq += 1
            record = RecordedResponse(self._seq, host, port, method, url, status, headers)
            self._records.append(record)
            return record

    def _done(self, record: RecordedResponse) -> None:
        """A closed answer identical to one already kept (same port, headers but the
        date, body) is dropped: polling loops fetch the same answer many times."""
        headers = re.sub(rb"(?im)^date:.*$", b"", record.headers)
        key = (record.port, hashlib.sha256(headers + b"\0" + bytes(record.body)).digest())
        with self._lock:
            if key in self._seen:
                try:
                    self._records.remove(record)
                except ValueError:
                    pass
            else:
                self._seen.add(key)


def _teeing(name: str, original: Any, tag: str) -> Any:
    """``HTTPResponse.NAME`` that also appends what it returns to the answer's record (once:
    not again when one reader calls another)."""
    busy = f"{tag}_busy"

    def reader(self: Any, *args: Any, **kw: Any) -> Any:
        record = self.__dict__.get(tag)
        if record is None or self.__dict__.get(busy):
            return original(self, *args, **kw)
        self.__dict__[busy] = True
        try:
            result = original(self, *args, **kw)
        finally:
            self.__dict__[busy] = False
        if name == "readinto":
            buffer = args[0] if args else kw["b"]
            if result:
                record.body += memoryview(buffer).cast("B")[:result]
        elif result:
            record.body += result
        return result

    reader.__name__ = name
    reader.__wrapped__ = original
    return reader


# The API a site's search fetches before the site stops, whatever its tests fetched:
# Buildbot's collections (builds with all their properties) and the gating plugin's.
API_PATHS = (
    "api/v2/builds?property=*",
    "api/v2/buildsets",
    "api/v2/buildrequests",
    "api/v2/builders",
    "api/v2/workers",
    "api/v2/masters",
    "api/v2/changes",
    "api/v2/sourcestamps",
    "api/v2/schedulers",
    "api/v2/forceschedulers",
    "api/v2/changesources",
    "plugins/gating/api/queue",
    "plugins/gating/api/gate",
    "plugins/gating/api/runs",
    "plugins/gating/api/whoami",
    "plugins/gating/api/compose-reports",
)


def fetch_api(url: str, paths: Sequence[str] = API_PATHS, budget: float = 20) -> int:
    """GET each path under ``url`` (a running master's), so that the recorder has its
    answer; errors are answers too; gives up after ``budget`` seconds. The number fetched."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + budget
    fetched = 0
    for path in paths:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with urllib.request.urlopen(url + path, timeout=min(10, left)) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            exc.read()
            exc.close()
        except OSError:
            continue
        fetched += 1
    return fetched


# -- a site ----------------------------------------------------------------------------

TAC_PASSWD = re.compile(r"^passwd\s*=\s*(['\"])(.*)\1\s*$", re.MULTILINE)


def _site_config(basedir: Path) -> dict[str, Any]:
    path = basedir / "config" / "gating.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError):
        data = {}
    return data if isinstance(data, dict) else {}


def site_secrets_dir(basedir: Path) -> Path:
    configured = Path(str(_site_config(basedir).get("secrets-dir", "secrets"))).expanduser()
    return configured if configured.is_absolute() else basedir / "master" / configured


def site_www_port(basedir: Path) -> int | None:
    port = _site_config(basedir).get("www-port")
    return int(port) if isinstance(port, int) else None


def site_policy(
    basedir: Path, registry: SecretRegistry
) -> tuple[list[tuple[Path, str]], list[Allowance]]:
    """What of a LocalSite layout is not searched and which files may hold which secrets;
    the secrets found there are added to ``registry``."""
    secrets_dir = site_secrets_dir(basedir)
    registry.add_dir(secrets_dir, "secrets")
    exclude = [(secrets_dir, "the master's secrets directory (Buildbot's SecretInAFile)")]
    allow: list[Allowance] = []
    workers = basedir / "workers"
    for wdir in sorted(workers.iterdir()) if workers.is_dir() else []:
        tac = wdir / "buildbot.tac"
        if tac.is_file():
            own = {m.group(2) for m in TAC_PASSWD.finditer(tac.read_text(errors="replace"))}
            for value in own:
                registry.add(f"worker {wdir.name} password (its buildbot.tac)", value)
            allow.append(
                Allowance(
                    f"workers/{wdir.name}/buildbot.tac",
                    "the worker's own password: buildbot-worker reads it from its buildbot.tac",
                    frozenset(own),
                )
            )
        passwd = wdir / "passwd"
        if passwd.is_file():
            own = passwd.read_text(errors="replace").strip()
            registry.add(f"worker {wdir.name} password (its passwd file)", own)
            allow.append(
                Allowance(
                    f"workers/{wdir.name}/passwd",
                    "the worker's own password file (workers/make-worker's layout)",
                    frozenset({own}),
                )
            )
    web = _site_config(basedir).get("web")
    auth = web.get("auth") if isinstance(web, dict) else None
    if isinstance(auth, dict) and isinstance(auth.get("htpasswd"), str):
        path = (basedir / "config" / Path(auth["htpasswd"]).expanduser()).resolve()
        try:
            rel = path.relative_to(basedir.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel is not None:
            allow.append(Allowance(rel, "the web login's htpasswd file (web: auth: htpasswd)"))
        # Buildbot's HTPasswdAuth compares plain-text passwords: each is a secret.
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        for line in lines:
            user, sep, password = line.partition(":")
            if sep and password and not line.lstrip().startswith("#"):
                registry.add(f"web user {user} password (htpasswd)", password, user=user)
    return exclude, allow


def check_site(
    basedir: Path,
    registry: SecretRegistry,
    responses: Iterable[RecordedResponse] = (),
) -> Report:
    """Search a site's whole base directory and the HTTP answers it gave (see the module
    documentation) for every secret of ``registry`` and of the site's secrets directory."""
    basedir = Path(basedir)
    site_registry = registry.copy()
    exclude, allow = site_policy(basedir, site_registry)
    scanner = Scanner(site_registry)
    scanner.scan_tree(basedir, exclude=exclude, allow=allow, label=str(basedir))
    scanner.scan_responses(responses)
    return scanner.report


def site_database(basedir: Path) -> str | None:
    """The site's database URL if it is a database server's (not a SQLite file, which the
    search of the site's files reads)."""
    url = _site_config(basedir).get("database")
    return url if isinstance(url, str) and not url.startswith("sqlite") else None


def check_site_database(basedir: Path, registry: SecretRegistry, url: str) -> Report:
    """Search a site's database on a server (while the server still runs) for every
    secret of ``registry`` and of the site's secrets directory."""
    site_registry = registry.copy()
    site_policy(Path(basedir), site_registry)
    scanner = Scanner(site_registry)
    scanner.scan_database_url(url, f"{basedir}'s database {url}")
    return scanner.report


def find_sites(root: Path, depth: int = 3) -> list[Path]:
    """The LocalSite base directories (``master/buildbot.tac``) at most ``depth`` levels
    under ``root``."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, _ in os.walk(root):
        level = len(Path(dirpath).relative_to(root).parts)
        if (Path(dirpath) / "master" / "buildbot.tac").is_file():
            found.append(Path(dirpath))
            dirnames[:] = []
        elif level >= depth:
            dirnames[:] = []
    return sorted(found)


# -- the test session's state ------------------------------------------------------------

REGISTRY = SecretRegistry()  # every secret the test session gave a site or a test server
RECORDER = ResponseRecorder()  # installed by tests/conftest.py for the whole session
LEAKS: list[str] = []  # every failed search's message, for the session's summary
SKIPPED: dict[str, str] = {}  # secrets too short to search, for the session's summary
SEARCHES: list[str] = []  # what each search covered, for the session's summary


def fail_on(report: Report, what: str) -> None:
    """Raise :class:`SecretLeak` (and keep the message for the session's end) if the
    search found a secret or could not search somewhere."""
    SKIPPED.update(report.skipped)
    verdict = "clean" if report.clean else "LEAKS"
    SEARCHES.append(f"{what}: {report.summary()}, {len(report.accepted)} accepted: {verdict}")
    if not report.clean:
        message = report.message(what)
        LEAKS.append(message)
        raise SecretLeak(message)
