"""Composes: read one, tell whether it is done, and check it (fedfind's check-compose).

A compose location is an ``http(s)://`` URL, a ``file://`` URL or a local path (a
``latest-Fedora-Rawhide`` symlink is resolved to the compose it points at). What is read, with
productmd's own classes:

* ``STATUS``: one word at the top of the compose (``STARTED``, ``FINISHED``,
  ``FINISHED_INCOMPLETE``, ``DOOMED``...); absent on old-style nightlies (status ``None``);
* ``metadata/composeinfo.json`` (productmd ``ComposeInfo``): compose id, date, type, respin and
  release; when absent, the id comes from ``metadata/images.json``'s compose section, else it is
  the last component of the (resolved) location;
* ``metadata/images.json`` (productmd ``Images``): the images; none when absent.

Pungi's own layout (``<topdir>/STATUS`` and ``<topdir>/compose/metadata/...``) is read too: when
neither metadata file is under ``metadata/``, ``compose/metadata/`` is tried.

A compose is ``pending``, ``finished``, ``finished-incomplete`` or ``doomed`` (:func:`state`):
from its ``STATUS`` when there is one, else from the koji tasks of the nightly (done when there
is at least one task and none is open; :func:`nightly_task_query`, :func:`tasks_for_compose`).

:func:`check` compares a compose with the previous one and with the images expected in it, and
adds the failed test jobs: a :class:`Report`, mailed as :func:`render_text` under
:func:`subject`, stored as :meth:`Report.to_json`.

Pure logic: no Twisted here; reading a location blocks (run it in a thread from the master).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import koji
import productmd.common
import productmd.images
import requests
from productmd.composeinfo import ComposeInfo
from productmd.images import Images

PENDING = "pending"
FINISHED = "finished"
FINISHED_INCOMPLETE = "finished-incomplete"
DOOMED = "doomed"
STATES = (PENDING, FINISHED, FINISHED_INCOMPLETE, DOOMED)

# STATUS file contents -> state; anything else (STARTED, TERMINATED...) is pending.
_STATUS_STATES = {
    "FINISHED": FINISHED,
    "FINISHED_INCOMPLETE": FINISHED_INCOMPLETE,
    "DOOMED": DOOMED,
}
# Koji task states in which a task is not done yet.
OPEN_TASK_STATES = frozenset(koji.TASK_STATES[name] for name in ("FREE", "OPEN", "ASSIGNED"))

# The koji methods of the image tasks of a nightly (old and new names).
NIGHTLY_TASK_METHODS = (
    "appliance",
    "createAppliance",
    "createImage",
    "createLiveCD",
    "image",
    "livecd",
)

STATUS_FILE = "STATUS"
COMPOSEINFO_FILE = "composeinfo.json"
IMAGES_FILE = "images.json"
METADATA_DIRS = ("metadata", "compose/metadata")

_DATE = re.compile(r"(?<!\d)(\d{8})(?!\d)")


class ComposeError(Exception):
    """A compose could not be read: the message names the location and the file."""


# --- model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One image of a compose, as listed in its ``images.json``."""

    variant: str
    subvariant: str
    type: str
    format: str
    arch: str
    path: str
    size: int | None = None
    bootable: bool | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The identity of the image across composes: ``(subvariant or variant, type, format,
        arch)``. Paths differ between composes (the compose id is in the file name)."""
        return (self.subvariant or self.variant, self.type, self.format, self.arch)

    def describe(self) -> str:
        """``Workstation live iso x86_64``."""
        return " ".join(self.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "subvariant": self.subvariant,
            "type": self.type,
            "format": self.format,
            "arch": self.arch,
            "path": self.path,
            "size": self.size,
            "bootable": self.bootable,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Image:
        return cls(
            variant=data["variant"],
            subvariant=data["subvariant"],
            type=data["type"],
            format=data["format"],
            arch=data["arch"],
            path=data["path"],
            size=data.get("size"),
            bootable=data.get("bootable"),
        )


def _image_order(image: Image) -> tuple[Any, ...]:
    return (image.key, image.variant, image.path)


@dataclass(frozen=True)
class Compose:
    """What was read at a compose location. ``location`` is the resolved one (a local symlink
    is followed); ``images`` are sorted by identity key, then variant and path."""

    id: str
    location: str
    status: str | None
    images: tuple[Image, ...] = ()
    date: str | None = None
    type: str | None = None
    respin: int | None = None
    release_short: str | None = None
    release_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "location": self.location,
            "status": self.status,
            "images": [image.to_json() for image in self.images],
            "date": self.date,
            "type": self.type,
            "respin": self.respin,
            "release_short": self.release_short,
            "release_version": self.release_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Compose:
        fields = {k: data.get(k) for k in ("date", "type", "respin", "release_short")}
        return cls(
            id=data["id"],
            location=data["location"],
            status=data.get("status"),
            images=tuple(Image.from_json(i) for i in data.get("images", ())),
            release_version=data.get("release_version"),
            **fields,
        )


@dataclass(frozen=True)
class Expected:
    """An image a compose should have: present when some image has this subvariant (or
    variant, for metadata without subvariants), type and arch."""

    subvariant: str
    type: str
    arch: str

    def describe(self) -> str:
        return f"{self.subvariant} {self.type} {self.arch}"

    def found_in(self, images: Iterable[Image]) -> bool:
        return any(
            (image.subvariant or image.variant, image.type, image.arch)
            == (self.subvariant, self.type, self.arch)
            for image in images
        )


@dataclass(frozen=True)
class FailedJob:
    """A test job of the compose that did not pass."""

    name: str
    url: str
    result: str


# --- reading a location ------------------------------------------------------------------------


class _Reader:
    """Reads the files of a compose; ``read`` is None when the file does not exist."""

    location: str

    def name(self, relpath: str) -> str:
        raise NotImplementedError

    def read(self, relpath: str) -> bytes | None:
        raise NotImplementedError

    def exists(self) -> bool:
        return True

    def close(self) -> None:
        pass


class _LocalReader(_Reader):
    def __init__(self, location: str) -> None:
        path = Path(unquote(urlsplit(location).path) if location.startswith("file:") else location)
        try:
            root = path.expanduser().resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ComposeError(f"{location}: cannot read the compose: {_reason(exc)}") from None
        if not root.is_dir():
            raise ComposeError(f"{location}: not a compose directory")
        self.root = root
        self.location = str(root)

    def name(self, relpath: str) -> str:
        return str(self.root / relpath)

    def read(self, relpath: str) -> bytes | None:
        try:
            return (self.root / relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ComposeError(f"{self.name(relpath)}: cannot read: {_reason(exc)}") from None


class _HttpReader(_Reader):
    def __init__(self, location: str, timeout: float) -> None:
        self.location = location
        self.base = location if location.endswith("/") else location + "/"
        self.timeout = timeout
        self.session = requests.Session()

    def name(self, relpath: str) -> str:
        return self.base + relpath

    def _get(self, url: str) -> requests.Response:
        try:
            return self.session.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ComposeError(f"{url}: cannot read: {exc}") from None

    def read(self, relpath: str) -> bytes | None:
        url = self.name(relpath)
        response = self._get(url)
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise ComposeError(f"{url}: HTTP {response.status_code} {response.reason}")
        return response.content

    def exists(self) -> bool:
        response = self._get(self.base)
        if response.status_code in (404, 410):
            return False
        if response.status_code >= 400:
            raise ComposeError(f"{self.base}: HTTP {response.status_code} {response.reason}")
        return True

    def close(self) -> None:
        self.session.close()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _load(reader: _Reader, relpath: str, kind: type[Any]) -> Any:
    """A productmd object (ComposeInfo, Images) from a JSON file; None when absent."""
    data = reader.read(relpath)
    if data is None:
        return None
    obj = kind()
    try:
        obj.deserialize(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ComposeError(
            f"{reader.name(relpath)}: not valid productmd {kind.__name__} metadata: {what}"
        ) from None
    return obj


def _images(images: Images | None) -> tuple[Image, ...]:
    if images is None:
        return ()
    seen: dict[tuple[str, str], Image] = {}
    for variant, arches in images.images.items():
        for entries in arches.values():
            for entry in entries:
                image = Image(
                    variant=variant,
                    subvariant=entry.subvariant or "",
                    type=entry.type,
                    format=entry.format,
                    arch=entry.arch,
                    path=entry.path,
                    size=entry.size,
                    bootable=bool(entry.bootable),
                )
                # the same file may be listed under several tree arches (source images)
                seen.setdefault((variant, image.path), image)
    return tuple(sorted(seen.values(), key=_image_order))


def _last_component(location: str) -> str:
    path = urlsplit(location).path if "://" in location else location
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def read_location(location: str, *, timeout: float = 30) -> Compose:
    """Read the compose at ``location`` (http(s) URL, ``file://`` URL or local path).

    Raises :class:`ComposeError` (naming the location and the file) when the location does not
    exist, a file cannot be fetched (HTTP errors other than 404, timeouts, refused connections)
    or its content is not valid JSON/productmd metadata. ``timeout`` is per HTTP request.
    """
    scheme = urlsplit(location).scheme.lower()
    reader: _Reader
    if scheme in ("http", "https"):
        reader = _HttpReader(location, timeout)
    elif scheme == "file" or "://" not in location:
        reader = _LocalReader(location)
    else:
        raise ComposeError(f"{location}: unsupported compose location (http(s), file or a path)")
    try:
        status_data = reader.read(STATUS_FILE)
        info = images = None
        for metadata in METADATA_DIRS:
            info = _load(reader, f"{metadata}/{COMPOSEINFO_FILE}", ComposeInfo)
            images = _load(reader, f"{metadata}/{IMAGES_FILE}", Images)
            if info is not None or images is not None:
                break
        if status_data is None and info is None and images is None and not reader.exists():
            raise ComposeError(
                f"{reader.location}: no compose there (no {STATUS_FILE}, "
                f"metadata/{COMPOSEINFO_FILE} or metadata/{IMAGES_FILE})"
            )
    finally:
        reader.close()

    status = None
    if status_data is not None:
        status = status_data.decode("utf-8", "replace").strip()
    if info is not None:
        return Compose(
            id=info.compose.id,
            location=reader.location,
            status=status,
            images=_images(images),
            date=info.compose.date,
            type=info.compose.type,
            respin=info.compose.respin,
            release_short=info.release.short,
            release_version=info.release.version,
        )
    if images is not None and images.compose.id:
        compose_id = images.compose.id
        date, ctype, respin = images.compose.date, images.compose.type, images.compose.respin
    else:
        compose_id = _last_component(reader.location)
        date, ctype, respin = compose_date(compose_id), None, None
    return Compose(
        id=compose_id,
        location=reader.location,
        status=status,
        images=_images(images),
        date=date,
        type=ctype,
        respin=respin,
    )


# --- state -----------------------------------------------------------------------------------


def state(status: str | None, tasks: Sequence[Mapping[str, Any]] | None) -> str:
    """The state of a compose: ``pending``, ``finished``, ``finished-incomplete`` or ``doomed``.

    With a ``STATUS``: FINISHED, FINISHED_INCOMPLETE and DOOMED say so, anything else (STARTED,
    ...) is pending. Without one (old-style nightly), the compose is ``finished`` only when koji
    shows at least one task for it (``tasks``: koji task infos, with their ``state``) and none is
    open (FREE, OPEN, ASSIGNED); else ``pending``.
    """
    if status is not None:
        return _STATUS_STATES.get(status.strip(), PENDING)
    if not tasks:
        return PENDING
    if any(task["state"] in OPEN_TASK_STATES for task in tasks):
        return PENDING
    return FINISHED


def compose_date(compose_id: str) -> str | None:
    """The first 8-digit date (``YYYYMMDD``) in a compose id, or None."""
    match = _DATE.search(compose_id)
    return match.group(1) if match else None


def compose_label(compose_id_or_location: str) -> str:
    """The label that identifies a nightly's koji tasks: what must appear in a task's request.

    The compose id is the last component of a location. The label is the 8-digit date found
    in the id (``Fedora-Rawhide-20150812`` -> ``20150812``: nightly image tasks carry the date
    in their image release), else the whole id. Two nightlies of the same day (Rawhide and
    Branched) share a date: give :func:`tasks_for_compose` a longer label to tell them apart.
    """
    compose_id = _last_component(compose_id_or_location)
    return compose_date(compose_id) or compose_id


def nightly_task_query(
    compose_id_or_location: str, methods: Sequence[str] = NIGHTLY_TASK_METHODS
) -> dict[str, dict[str, Any]]:
    """The koji ``listTasks`` options to find a nightly's image tasks: one query per method
    (a hub matches one ``method`` at a time), ``{method: opts}``.

    Each asks for decoded requests (``decode``), and when the label is a date, for the tasks
    created since that day began (UTC, ``createdAfter`` as an epoch timestamp). Filter the
    answers with ``tasks_for_compose(tasks, compose_label(compose_id_or_location))``.
    """
    if not methods:
        raise ValueError("no koji task methods to query")
    label = compose_label(compose_id_or_location)
    base: dict[str, Any] = {"decode": True}
    if _DATE.fullmatch(label):
        day = time.strptime(label, "%Y%m%d")
        base["createdAfter"] = float(calendar.timegm(day))
    return {method: {**base, "method": method} for method in sorted(set(methods))}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def tasks_for_compose(tasks: Iterable[Mapping[str, Any]], label: str) -> list[Mapping[str, Any]]:
    """The tasks whose (decoded) request mentions ``label`` in one of its strings, by task id.

    Tasks of several queries may repeat: each task id is kept once.
    """
    found: dict[Any, Mapping[str, Any]] = {}
    for task in tasks:
        if any(label in text for text in _strings(task.get("request"))):
            found.setdefault(task["id"], task)
    return [found[key] for key in sorted(found)]


# --- expected images -------------------------------------------------------------------------

_EXPECTED_KEYS = ("subvariant", "type", "arch")


def parse_expected(entries: Sequence[Mapping[str, Any]]) -> tuple[Expected, ...]:
    """Expected images from ``{subvariant, type, arch}`` mappings (the site configuration).

    ``type`` must be a productmd image type and ``arch`` an RPM arch. Every bad entry is
    reported in one ValueError, each line naming the entry (``expected image #N {...}: ...``).
    The result is deduplicated and sorted.
    """
    errors: list[str] = []
    found: set[Expected] = set()
    for index, entry in enumerate(entries, 1):
        where = f"expected image #{index} {entry!r}"
        if not isinstance(entry, Mapping):
            errors.append(f"{where}: expected a mapping with keys subvariant, type, arch")
            continue
        problems = [f"unknown key {key!r}" for key in entry if key not in _EXPECTED_KEYS]
        for key in _EXPECTED_KEYS:
            if key not in entry:
                problems.append(f"missing key {key!r}")
            elif not isinstance(entry[key], str) or not entry[key].strip():
                problems.append(f"{key!r} must be a non-empty string")
        if not problems:
            if entry["type"] not in productmd.images.SUPPORTED_IMAGE_TYPES:
                problems.append(
                    f"unknown image type {entry['type']!r} (a productmd image type: "
                    + ", ".join(productmd.images.SUPPORTED_IMAGE_TYPES)
                    + ")"
                )
            if entry["arch"] not in productmd.common.RPM_ARCHES:
                problems.append(f"unknown arch {entry['arch']!r}")
        if problems:
            errors.append(f"{where}: " + "; ".join(problems))
            continue
        found.add(Expected(entry["subvariant"], entry["type"], entry["arch"]))
    if errors:
        raise ValueError("\n".join(errors))
    return tuple(sorted(found, key=_expected_order))


def _expected_order(expected: Expected) -> tuple[str, str, str]:
    return (expected.subvariant, expected.type, expected.arch)


def _job_order(job: FailedJob) -> tuple[str, str, str]:
    return (job.name, job.url, job.result)


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """A compose check report. Lists are sorted: images by identity key, variant and path;
    expected images by subvariant, type and arch; failed jobs by name, url and result."""

    compose_id: str
    location: str
    status: str | None
    previous_id: str | None
    added: tuple[Image, ...] = ()
    removed: tuple[Image, ...] = ()
    missing_expected: tuple[Expected, ...] = ()
    failed_jobs: tuple[FailedJob, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "compose": {"id": self.compose_id, "location": self.location, "status": self.status},
            "previous": self.previous_id,
            "added": [image.to_json() for image in self.added],
            "removed": [image.to_json() for image in self.removed],
            "missing_expected": [
                {"subvariant": e.subvariant, "type": e.type, "arch": e.arch}
                for e in self.missing_expected
            ],
            "failed_jobs": [
                {"name": j.name, "url": j.url, "result": j.result} for j in self.failed_jobs
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        compose = data["compose"]
        return cls(
            compose_id=compose["id"],
            location=compose["location"],
            status=compose["status"],
            previous_id=data["previous"],
            added=tuple(Image.from_json(i) for i in data["added"]),
            removed=tuple(Image.from_json(i) for i in data["removed"]),
            missing_expected=tuple(
                Expected(e["subvariant"], e["type"], e["arch"]) for e in data["missing_expected"]
            ),
            failed_jobs=tuple(
                FailedJob(j["name"], j["url"], j["result"]) for j in data["failed_jobs"]
            ),
        )


def check(
    current: Compose,
    previous: Compose | None,
    expected: Sequence[Expected],
    failed_jobs: Sequence[FailedJob],
) -> Report:
    """The check report of ``current``: the images added and removed since ``previous`` (by
    identity key; nothing without a previous compose), the expected images it lacks and the
    failed jobs."""
    added: tuple[Image, ...] = ()
    removed: tuple[Image, ...] = ()
    if previous is not None:
        before = {image.key for image in previous.images}
        now = {image.key for image in current.images}
        added = tuple(sorted((i for i in current.images if i.key not in before), key=_image_order))
        removed = tuple(sorted((i for i in previous.images if i.key not in now), key=_image_order))
    missing = tuple(
        sorted({e for e in expected if not e.found_in(current.images)}, key=_expected_order)
    )
    return Report(
        compose_id=current.id,
        location=current.location,
        status=current.status,
        previous_id=previous.id if previous is not None else None,
        added=added,
        removed=removed,
        missing_expected=missing,
        failed_jobs=tuple(sorted(set(failed_jobs), key=_job_order)),
    )


def subject(report: Report) -> str:
    """The mail subject: ``Compose check report: <id> (<status>)``."""
    return f"Compose check report: {report.compose_id} ({report.status or 'no STATUS'})"


def render_text(report: Report) -> str:
    """The mail body: plain text, one section per list, a ``No ...`` line for an empty one."""
    lines = [
        f"Compose: {report.compose_id}",
        f"Location: {report.location}",
        f"Status: {report.status or 'no STATUS file'}",
        f"Previous compose: {report.previous_id or 'none'}",
        "",
    ]

    def section(title: str, items: Sequence[str], empty: str) -> None:
        if items:
            lines.extend([f"{title}:", ""])
            lines.extend(f"  {item}" for item in items)
        else:
            lines.append(empty)
        lines.append("")

    section(
        "Missing expected images",
        [e.describe() for e in report.missing_expected],
        "No missing expected images.",
    )
    section(
        "Failed jobs",
        [f"{j.name} ({j.result}): {j.url}" for j in report.failed_jobs],
        "No failed jobs.",
    )
    if report.previous_id is None:
        lines.extend(["No previous compose to compare with.", ""])
    else:
        prev = report.previous_id
        section(
            f"Images in this compose but not {prev}",
            [f"{i.describe()}: {i.path}" for i in report.added],
            f"No images in this compose but not {prev}.",
        )
        section(
            f"Images in {prev} but not this compose",
            [f"{i.describe()}: {i.path}" for i in report.removed],
            f"No images in {prev} but not this compose.",
        )
    return "\n".join(lines).rstrip("\n") + "\n"
